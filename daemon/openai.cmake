# The OpenAI-compatible HTTP gateway (include()d from daemon/CMakeLists.txt): OpenAI JSON to
# and from inferbox.v1 over an InferenceFrontend, on Beast (header-only), POSIX sockets and
# OpenSSL (TLS for both of inferboxd's listeners: tls.h).
# Paths are relative to this file, so it works from any including directory.
find_package(OpenSSL REQUIRED)
add_library(inferbox_openai STATIC
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_gateway.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_http.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_reasoning.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_request.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_response.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_socket.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_sse.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/openai_tools.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/tls.cc)
target_include_directories(inferbox_openai PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include)
target_link_libraries(inferbox_openai
  PUBLIC inferbox_common inferbox_proto inferbox_json
  PRIVATE fmt::fmt spdlog::spdlog inferbox_warnings Threads::Threads OpenSSL::SSL)
