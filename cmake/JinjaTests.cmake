# Tests of the Jinja chat-template renderer (runtime/tokenize/jinja*), included from the top-level
# CMakeLists.txt's tests:
#   pqvk_jinja_tests                       its own GoogleTest suite (tests/test_jinja.cpp; no GPU)
add_executable(pqvk_jinja_tests tests/test_jinja.cpp)
target_link_libraries(pqvk_jinja_tests PRIVATE pqvk_tokenize GTest::gtest GTest::gtest_main)
target_compile_definitions(pqvk_jinja_tests PRIVATE PQVK_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data")
target_compile_options(pqvk_jinja_tests PRIVATE ${PQVK_WARNINGS})
gtest_discover_tests(pqvk_jinja_tests DISCOVERY_TIMEOUT 60)
