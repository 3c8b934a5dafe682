# Installs the npm reference implementations (tests/reference/package.json, exact versions
# pinned by its package-lock.json) into the build tree, with the reference scripts beside
# them so that Node resolves their imports. Runs as the ctest fixture `npm_reference`;
# skips `npm ci` when the lock file has not changed since the last install.
#   cmake -DSOURCE_DIR=<tests/reference> -DDEST_DIR=<build/reference> -DNPM=<npm> -P this
file(MAKE_DIRECTORY "${DEST_DIR}")
file(GLOB scripts "${SOURCE_DIR}/*.mjs")
file(COPY "${SOURCE_DIR}/package.json" "${SOURCE_DIR}/package-lock.json" ${scripts}
     DESTINATION "${DEST_DIR}")

file(SHA256 "${SOURCE_DIR}/package-lock.json" lock_hash)
set(stamp "${DEST_DIR}/.installed-lock-sha256")
if(EXISTS "${stamp}" AND EXISTS "${DEST_DIR}/node_modules")
  file(READ "${stamp}" installed_hash)
  if(installed_hash STREQUAL lock_hash)
    message(STATUS "npm references already installed in ${DEST_DIR}")
    return()
  endif()
endif()

execute_process(
  COMMAND "${NPM}" ci --no-audit --no-fund --loglevel=error
  WORKING_DIRECTORY "${DEST_DIR}"
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "npm ci in ${DEST_DIR} failed (${result}); the reference comparisons "
                      "need the npm registry once per lock-file change")
endif()
file(WRITE "${stamp}" "${lock_hash}")
