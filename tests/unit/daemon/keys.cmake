# API keys: the key store, the Admin key RPCs and inferboxctl's keys commands.
# Paths are relative to this file so it can be included from any directory.
find_package(SQLite3 REQUIRED)

inferbox_add_test(key_store_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/key_store_test.cc
  LIBS inferbox_keys inferbox_test_support SQLite::SQLite3)

inferbox_add_test(admin_keys_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/../admin/admin_keys_test.cc
  LIBS inferbox_admin inferbox_keys inferbox_test_support)

# inferboxctl (the real binary) against the Admin service served in the test process.
inferbox_add_test(inferboxctl_keys_test LABELS integration
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/../admin/inferboxctl_keys_test.cc
  LIBS inferbox_admin inferbox_keys inferbox_test_support)
target_compile_definitions(inferboxctl_keys_test PRIVATE
  INFERBOXCTL_PATH="$<TARGET_FILE:inferboxctl>")
add_dependencies(inferboxctl_keys_test inferboxctl)
