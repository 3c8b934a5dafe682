# API keys: the key store (SQLite, hashed secrets), the Authenticator it implements, and the
# gRPC glue (bearer metadata, Status mapping). Included from daemon/CMakeLists.txt; paths
# are relative to this file so it can be included from elsewhere too.
find_package(SQLite3 REQUIRED)
find_package(OpenSSL 3 REQUIRED COMPONENTS Crypto)
find_package(fmt CONFIG REQUIRED)

add_library(inferbox_keys STATIC
  ${CMAKE_CURRENT_LIST_DIR}/src/key_store.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/grpc_auth.cc
)
target_include_directories(inferbox_keys PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include)
target_link_libraries(inferbox_keys
  PUBLIC inferbox_common inferbox_grpc_status inferbox_proto gRPC::grpc++
  PRIVATE inferbox_sqlite SQLite::SQLite3 OpenSSL::Crypto fmt::fmt spdlog::spdlog inferbox_warnings)
