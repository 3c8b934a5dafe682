# Key quotas and the usage ledger (SQLite), and the meter that admits and accounts every
# generation with them. Included from daemon/CMakeLists.txt; the admin library links it too
# (GetUsage). Paths are relative to this file so it can be included from elsewhere.
find_package(SQLite3 REQUIRED)
find_package(fmt CONFIG REQUIRED)

add_library(inferbox_usage STATIC
  ${CMAKE_CURRENT_LIST_DIR}/src/key_quotas.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/usage_ledger.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/usage_meter.cc
)
target_include_directories(inferbox_usage PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include)
target_link_libraries(inferbox_usage
  PUBLIC inferbox_common inferbox_proto
  PRIVATE inferbox_sqlite SQLite::SQLite3 fmt::fmt spdlog::spdlog inferbox_warnings)
