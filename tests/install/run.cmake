# ctest driver for what a user of the installed package does (tests/CMakeLists.txt runs it):
#   -DINSTALL_FROM=BUILD_DIR -DPREFIX=P     installs bus's build tree into a fresh prefix P;
#   -DSOURCE_DIR=S -DWORK_DIR=W -DPREFIX=P  configures the outside project S in W against P,
#       builds it, then runs the programs RUN names (comma-separated, relative to W), if any.
# COMPILER, LAUNCHER: bus's compiler (a user builds with the compiler their library was built
# with) and compiler launcher (ccache, when bus's build has one). README: passed on to S.
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc TIMEOUT 240)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " command)
    message(FATAL_ERROR "failed (${rc}): ${command}")
  endif()
endfunction()

if(INSTALL_FROM)
  file(REMOVE_RECURSE ${PREFIX})
  step(${CMAKE_COMMAND} --install ${INSTALL_FROM} --prefix ${PREFIX})
  return()
endif()

file(REMOVE_RECURSE ${WORK_DIR})
set(configure -S ${SOURCE_DIR} -B ${WORK_DIR} -G Ninja -DCMAKE_PREFIX_PATH=${PREFIX}
    -DCMAKE_CXX_COMPILER=${COMPILER})
if(LAUNCHER)
  list(APPEND configure -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
if(README)
  list(APPEND configure -DREADME=${README})
endif()
step(${CMAKE_COMMAND} ${configure})
# Two jobs: the test runs beside the rest of the suite.
step(${CMAKE_COMMAND} --build ${WORK_DIR} --parallel 2)
string(REPLACE "," ";" programs "${RUN}")
foreach(program IN LISTS programs)
  step(${WORK_DIR}/${program})
endforeach()
