# The model library (runtime/model), pq-quantize, and, with PQVK_FUZZ, the libFuzzer targets.
# Included from the top-level CMakeLists.txt right after pqvk_quant is defined.
find_library(SENTENCEPIECE_LIBRARY sentencepiece REQUIRED)   # libsentencepiece-dev
find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h REQUIRED)

if(PQVK_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "PQVK_FUZZ needs clang (configure with -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14)")
  endif()
  # Coverage instrumentation + sanitizers for everything the fuzz target links.
  set(PQVK_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_compile_options(pqvk_quant PRIVATE ${PQVK_FUZZ_FLAGS} -fsanitize=fuzzer-no-link)
endif()

add_library(pqvk_model STATIC
  runtime/model/crc32.cpp
  runtime/model/config.cpp
  runtime/model/convert.cpp
  runtime/model/files.cpp
  runtime/model/gguf.cpp
  runtime/model/gguf_tokenizer.cpp
  runtime/model/hf_checkpoint.cpp
  runtime/model/import_gguf.cpp
  runtime/model/import_hf.cpp
  runtime/model/import_llama2c.cpp
  runtime/model/import_reference.cpp
  runtime/model/importers.cpp
  runtime/model/json_fields.cpp
  runtime/model/pqm.cpp
  runtime/model/pqm_writer.cpp
  runtime/model/safetensors.cpp
  runtime/model/tokenizer_import.cpp)
target_include_directories(pqvk_model PUBLIC ${CMAKE_SOURCE_DIR}/runtime PRIVATE ${SENTENCEPIECE_INCLUDE_DIR})
target_link_libraries(pqvk_model PUBLIC pqvk_quant nlohmann_json::nlohmann_json Threads::Threads
                                 PRIVATE ${SENTENCEPIECE_LIBRARY})
target_compile_options(pqvk_model PRIVATE ${PQVK_WARNINGS})

if(PQVK_FUZZ)
  target_compile_options(pqvk_model PRIVATE ${PQVK_FUZZ_FLAGS} -fsanitize=fuzzer-no-link)
  # A reader's fuzz target fuzz_NAME (tests/fuzz_NAME.cpp), and a tool writing its seed corpus
  # (tests/fuzz_NAME_seeds.cpp and the fixtures it needs).
  function(pqvk_fuzz_target name)
    add_executable(fuzz_${name} tests/fuzz_${name}.cpp)
    target_link_libraries(fuzz_${name} PRIVATE pqvk_model)
    target_compile_options(fuzz_${name} PRIVATE ${PQVK_WARNINGS} ${PQVK_FUZZ_FLAGS} -fsanitize=fuzzer)
    target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    add_executable(fuzz_${name}_seeds tests/fuzz_${name}_seeds.cpp ${ARGN})
    target_include_directories(fuzz_${name}_seeds PRIVATE ${CMAKE_SOURCE_DIR}/tests ${SENTENCEPIECE_INCLUDE_DIR})
    target_link_libraries(fuzz_${name}_seeds PRIVATE pqvk_model ${SENTENCEPIECE_LIBRARY})
    target_compile_options(fuzz_${name}_seeds PRIVATE ${PQVK_WARNINGS} ${PQVK_FUZZ_FLAGS})
    target_link_options(fuzz_${name}_seeds PRIVATE -fsanitize=address,undefined)
  endfunction()
  pqvk_fuzz_target(pqm tests/model_fixtures.cpp)                           # .pqm files
  pqvk_fuzz_target(gguf tests/model_fixtures.cpp tests/gguf_fixtures.cpp)  # GGUF input
else()
  add_executable(pq-quantize apps/pq-quantize.cpp)
  target_link_libraries(pq-quantize PRIVATE pqvk_model CLI11::CLI11)
  target_compile_options(pq-quantize PRIVATE ${PQVK_WARNINGS})
endif()

# ---- tests of runtime/model (no GPU): pqvk_model_tests --------------------------------------
if(PQVK_BUILD_TESTS AND NOT PQVK_FUZZ)
  enable_testing()
  find_package(GTest REQUIRED)
  include(GoogleTest)
  add_executable(pqvk_model_tests
    tests/model_fixtures.cpp
    tests/test_model.cpp
    tests/test_import.cpp
    tests/test_model_cli.cpp)
  target_include_directories(pqvk_model_tests PRIVATE ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(pqvk_model_tests PRIVATE pqvk_model GTest::gtest GTest::gtest_main)
  target_compile_options(pqvk_model_tests PRIVATE ${PQVK_WARNINGS})
  target_compile_definitions(pqvk_model_tests PRIVATE
    PQVK_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data"
    PQVK_QUANTIZE_BIN="$<TARGET_FILE:pq-quantize>"
    PQVK_INFO_BIN="$<TARGET_FILE:pq-info>")
  add_dependencies(pqvk_model_tests pq-quantize pq-info)
  gtest_discover_tests(pqvk_model_tests DISCOVERY_TIMEOUT 60)

  # .pqm tensors through the GPU kernels (pqvk_runtime is defined after this file is included).
  add_executable(pqvk_model_gpu_tests tests/test_model_gpu.cpp tests/model_fixtures.cpp tests/vk_test_env.cpp)
  target_include_directories(pqvk_model_gpu_tests PRIVATE ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(pqvk_model_gpu_tests PRIVATE pqvk_model pqvk_runtime GTest::gtest GTest::gtest_main)
  target_compile_options(pqvk_model_gpu_tests PRIVATE ${PQVK_WARNINGS})
  target_compile_definitions(pqvk_model_gpu_tests PRIVATE PQVK_TEST_DATA="${CMAKE_SOURCE_DIR}/tests/data")
  gtest_discover_tests(pqvk_model_gpu_tests DISCOVERY_TIMEOUT 60 PROPERTIES ENVIRONMENT "PQVK_VALIDATION=1")
endif()
