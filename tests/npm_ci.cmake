# Installs a JavaScript test's npm packages (pinned in DIR/package-lock.json) when node_modules
# is missing or was installed from another lock file: the dashboard's (puppeteer-core, which
# never downloads a browser; the test drives Debian's chromium) and the NATS bridge's (nats).
#   cmake -DNPM=npm -DDIR=tests/dashboard -P tests/npm_ci.cmake
file(SHA256 ${DIR}/package-lock.json lock)
set(stamp ${DIR}/node_modules/.bus-lock-sha256)
if(EXISTS ${stamp})
  file(READ ${stamp} installed)
  if(installed STREQUAL lock)
    return()
  endif()
endif()
message(STATUS "npm ci in ${DIR}")
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env PUPPETEER_SKIP_DOWNLOAD=1
          ${NPM} ci --no-audit --no-fund --loglevel=error
  WORKING_DIRECTORY ${DIR}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "npm ci failed in ${DIR} (${rc})")
endif()
file(WRITE ${stamp} ${lock})
