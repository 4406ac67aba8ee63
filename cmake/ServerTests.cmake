# Tests of pq-server (apps/pq-server.cpp, apps/server/), included from the top-level
# CMakeLists.txt's tests. The servers they start listen on 127.0.0.1 only, on ports the kernel
# picks (--port 0), with bounded waits, and are always stopped (tests/server/server_util.py).
#   pqvk_server_tests     GoogleTest (no HTTP): the scheduler on the CPU engine and on a failing
#                         engine, the request parser, the client-socket lookup
#   server.api            curl and Python's standard library: every endpoint, greedy answers
#                         equal to pq-run's, streaming, stop strings, sampling fields, errors, API
#                         key, a full queue (503 + Retry-After)
#   server.load           64 concurrent requests with --parallel 8, every answer equal to pq-run's
#   server.fuzz           malformed bodies: every one a 4xx, the server healthy after
#   server.gpu-batching   --device 0 (Vulkan, also on lavapipe): the same greedy answer alone and
#                         among 7 others; a client that disconnects frees its slot at once
#   server.shutdown       SIGTERM: finishes what runs, exits 0; the grace period cancels
#   server.nginx          two instances behind nginx (least_conn), one killed midway: every request
#                         completes (retried on the other)
#   server.npm-ci         (fixture) the pinned "openai" npm package installed from the registry
#   server.openai-node    the official OpenAI client library for Node.js, streamed and not
add_executable(pqvk_server_tests tests/test_server.cpp)
target_link_libraries(pqvk_server_tests PRIVATE pqvk_server GTest::gtest GTest::gtest_main)
target_compile_definitions(pqvk_server_tests PRIVATE PQVK_DEFAULT_MODEL="${PQVK_DEFAULT_MODEL}")
target_compile_options(pqvk_server_tests PRIVATE ${PQVK_WARNINGS})
add_dependencies(pqvk_server_tests default_model)
gtest_discover_tests(pqvk_server_tests DISCOVERY_TIMEOUT 60)

find_program(PQVK_CURL curl)
find_program(PQVK_NGINX nginx PATHS /usr/sbin)
find_program(PQVK_NODE node)
find_program(PQVK_NPM npm)
if(NOT PQVK_CURL OR NOT PQVK_NGINX OR NOT PQVK_NODE OR NOT PQVK_NPM)
  message(FATAL_ERROR "pq-server's tests run curl, nginx, node and npm: install the Debian packages curl, nginx-light "
                      "and nodejs + npm (tools/setup-debian.sh), or configure with -DPQVK_BUILD_TESTS=OFF")
endif()
get_filename_component(PQVK_NGINX_DIR ${PQVK_NGINX} DIRECTORY)

set(PQVK_SERVER_TEST_ENV "PQ_SERVER=$<TARGET_FILE:pq-server>" "PQ_RUN=$<TARGET_FILE:pq-run>"
    "PQVK_MODEL=${PQVK_DEFAULT_MODEL}" "PATH=${PQVK_NGINX_DIR}:$ENV{PATH}")
foreach(t api load fuzz gpu-batching shutdown nginx)
  string(REPLACE "-" "_" script ${t})
  add_test(NAME server.${t} COMMAND ${PQVK_PYTHON3} ${CMAKE_SOURCE_DIR}/tests/server/test_${script}.py)
  set_tests_properties(server.${t} PROPERTIES ENVIRONMENT "${PQVK_SERVER_TEST_ENV};PQVK_VALIDATION=1" TIMEOUT 900)
endforeach()

set(PQVK_NODE_DIR ${CMAKE_BINARY_DIR}/server-node)
add_test(NAME server.npm-ci
         COMMAND sh -c "mkdir -p '${PQVK_NODE_DIR}' && cp '${CMAKE_SOURCE_DIR}/tests/server/node/package.json' \
'${CMAKE_SOURCE_DIR}/tests/server/node/package-lock.json' '${CMAKE_SOURCE_DIR}/tests/server/node/openai_client.mjs' \
'${PQVK_NODE_DIR}' && cd '${PQVK_NODE_DIR}' && '${PQVK_NPM}' ci --no-audit --no-fund")
set_tests_properties(server.npm-ci PROPERTIES FIXTURES_SETUP server_node TIMEOUT 600)
add_test(NAME server.openai-node COMMAND ${PQVK_PYTHON3} ${CMAKE_SOURCE_DIR}/tests/server/test_openai_node.py)
set_tests_properties(server.openai-node PROPERTIES FIXTURES_REQUIRED server_node TIMEOUT 900
                     ENVIRONMENT "${PQVK_SERVER_TEST_ENV};OPENAI_NODE_DIR=${PQVK_NODE_DIR};PQVK_VALIDATION=1")
