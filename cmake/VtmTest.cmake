# vtm_add_test(NAME <name> LABEL <unit|integration|e2e|bench> SOURCES ... LIBS ... [TIMEOUT s])
# One GoogleTest binary registered as one CTest test with a tier label. Tests find the
# project's binaries through VTM_BUILD_DIR and its sources through VTM_SOURCE_DIR.
function(vtm_add_test)
  cmake_parse_arguments(T "" "NAME;LABEL;TIMEOUT" "SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main Threads::Threads)
  target_compile_definitions(${T_NAME} PRIVATE VTM_BUILD_DIR="${CMAKE_BINARY_DIR}"
                                               VTM_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} --gtest_color=no)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS ${T_LABEL} TIMEOUT ${T_TIMEOUT})
endfunction()
