# Tests of the Jinja chat-template renderer (runtime/tokenize/jinja*), included from the top-level
# CMakeLists.txt's tests:
#   pqvk_jinja_tests                       its own GoogleTest suite (tests/test_jinja.cpp; no GPU)
#   chat-template.jinja2-real-templates    every template of tests/data/chat-templates with every
#                                          conversation of tests/data/chat/conversations, and
#   chat-template.jinja2-cases             the feature cases of tests/data/chat/jinja-cases.json:
#                                          pq-info's rendering against Python's jinja2 (Debian's
#                                          python3-jinja2) called as HuggingFace calls it, byte for
#                                          byte (tests/chat_template_check.py)
add_executable(pqvk_jinja_tests tests/test_jinja.cpp)
target_link_libraries(pqvk_jinja_tests PRIVATE pqvk_tokenize GTest::gtest GTest::gtest_main)
target_compile_definitions(pqvk_jinja_tests PRIVATE PQVK_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data")
target_compile_options(pqvk_jinja_tests PRIVATE ${PQVK_WARNINGS})
gtest_discover_tests(pqvk_jinja_tests DISCOVERY_TIMEOUT 60)

# Debian's interpreter first (python3-jinja2 installs there), then whatever python3 is on the PATH.
find_program(PQVK_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
find_program(PQVK_PYTHON3 python3)
execute_process(COMMAND ${PQVK_PYTHON3} -c "import jinja2" RESULT_VARIABLE PQVK_JINJA2_MISSING OUTPUT_QUIET ERROR_QUIET)
if(NOT PQVK_PYTHON3 OR PQVK_JINJA2_MISSING)
  message(FATAL_ERROR "the chat-template tests compare with Python's jinja2: install the Debian package "
                      "python3-jinja2 (tools/setup-debian.sh), or configure with -DPQVK_BUILD_TESTS=OFF")
endif()
set(PQVK_CHAT_TEMPLATE_CHECK ${PQVK_PYTHON3} ${CMAKE_SOURCE_DIR}/tests/chat_template_check.py --pq-info $<TARGET_FILE:pq-info>)
add_test(NAME chat-template.jinja2-real-templates
         COMMAND ${PQVK_CHAT_TEMPLATE_CHECK} --templates ${CMAKE_SOURCE_DIR}/tests/data/chat-templates
                 --conversations ${CMAKE_SOURCE_DIR}/tests/data/chat/conversations)
add_test(NAME chat-template.jinja2-cases COMMAND ${PQVK_CHAT_TEMPLATE_CHECK} --cases ${CMAKE_SOURCE_DIR}/tests/data/chat/jinja-cases.json)
set_tests_properties(chat-template.jinja2-real-templates chat-template.jinja2-cases PROPERTIES TIMEOUT 600)
