# The version comes from project(); the commit from git when the source is a checkout.
set(INFERBOX_VERSION "${PROJECT_VERSION}")
set(INFERBOX_GIT_COMMIT "unknown")
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS "${PROJECT_SOURCE_DIR}/.git")
  execute_process(
    COMMAND "${GIT_EXECUTABLE}" rev-parse --short=12 HEAD
    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
    OUTPUT_VARIABLE _inferbox_commit
    OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET
    RESULT_VARIABLE _inferbox_git_result)
  if(_inferbox_git_result EQUAL 0 AND _inferbox_commit)
    set(INFERBOX_GIT_COMMIT "${_inferbox_commit}")
  endif()
endif()
