# Quotas, the usage ledger, the Admin audit log and inferboxctl's usage/audit output (unit),
# and the same through the real daemon and engine (integration). Paths are relative to this
# file so it can be included from any directory.
find_package(SQLite3 REQUIRED)

inferbox_add_test(key_quotas_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/key_quotas_test.cc
  LIBS inferbox_usage)

inferbox_add_test(usage_ledger_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/usage_ledger_test.cc
  LIBS inferbox_usage inferbox_keys inferbox_test_support SQLite::SQLite3)

inferbox_add_test(admin_audit_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/../admin/admin_audit_test.cc
  LIBS inferbox_admin inferbox_keys inferbox_usage inferbox_test_support SQLite::SQLite3)

inferbox_add_test(ctl_reports_test LABELS unit
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/../admin/ctl_reports_test.cc
          ${CMAKE_CURRENT_LIST_DIR}/../admin/ctl_diagnostics_test.cc
          ${PROJECT_SOURCE_DIR}/admin/src/ctl_reports.cc
          ${PROJECT_SOURCE_DIR}/admin/src/ctl_diagnostics.cc
  LIBS inferbox_proto inferbox_common inferbox_test_support fmt::fmt)
target_include_directories(ctl_reports_test PRIVATE ${PROJECT_SOURCE_DIR}/admin/src)

# The real daemon, engine and inferboxctl; keys are made in the daemon's database beforehand.
inferbox_add_test(usage_integration_test LABELS integration
  SOURCES ${PROJECT_SOURCE_DIR}/tests/integration/daemon_fixture.cc
          ${PROJECT_SOURCE_DIR}/tests/integration/usage_quota_test.cc
  LIBS inferbox_proto inferbox_common inferbox_keys inferbox_usage inferbox_test_grpc_protos
       inferbox_test_support tomlplusplus::tomlplusplus Boost::json CURL::libcurl fmt::fmt
  FIXTURES npm_reference)
target_include_directories(usage_integration_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
target_compile_definitions(usage_integration_test PRIVATE
  INFERBOXD_PATH="$<TARGET_FILE:inferboxd>"
  INFERBOXCTL_PATH="$<TARGET_FILE:inferboxctl>"
  INFERBOX_ENGINE_PATH="$<TARGET_FILE:inferbox-engine>"
  INFERBOX_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
add_dependencies(usage_integration_test inferboxd inferboxctl inferbox-engine)
