# Installs the npm packages pinned by DIR's package-lock.json (`npm ci`) when DIR/node_modules is
# missing or was installed from another lock file: the dashboard test's puppeteer-core (which
# never downloads a browser: the test drives Debian's chromium), the Node client's protobufjs,
# the NATS bridge test's nats.
#   cmake -DNPM=npm -DDIR=tests/dashboard -P tests/support/npm_ci.cmake
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
