# pq-chat: the desktop chat demo (apps/pq-chat.cpp + apps/chat/) and its tests. Included at the
# end of the top-level CMakeLists.txt (it uses pqvk_llm, pqvk_tokenize, PQVK_DEFAULT_MODEL).
#
# Debian packages: libglfw3-dev (windows), libimgui-dev (Dear ImGui), libpng-dev (screenshots),
# fonts-dejavu-core (the UI font; optional at run time); the tests run the window on Xvfb
# (xvfb; tests/run_with_xvfb.sh). tools/setup-debian.sh installs them all.
option(PQVK_CHAT "Build pq-chat, the desktop chat demo (GLFW + Dear ImGui)" ON)
if(NOT PQVK_CHAT)
  return()
endif()

find_package(glfw3 3.3 QUIET)
find_package(PNG QUIET)
pkg_check_modules(IMGUI QUIET imgui)
find_path(PQVK_IMGUI_BACKEND_DIR imgui_impl_vulkan.cpp
          PATHS /usr/share/doc/libimgui-dev/examples/backends NO_DEFAULT_PATH)
find_path(PQVK_IMGUI_BACKEND_HEADERS imgui_impl_vulkan.h PATHS /usr/include/imgui/backends)
if(NOT glfw3_FOUND OR NOT PNG_FOUND OR NOT IMGUI_FOUND OR NOT PQVK_IMGUI_BACKEND_DIR OR NOT PQVK_IMGUI_BACKEND_HEADERS)
  message(FATAL_ERROR "pq-chat needs the Debian packages libglfw3-dev, libimgui-dev and libpng-dev: "
                      "run tools/setup-debian.sh, or configure with -DPQVK_CHAT=OFF")
endif()

# Dear ImGui's GLFW and Vulkan backends, compiled from the sources libimgui-dev ships. (libimgui.a
# holds prebuilt ones, but that Vulkan backend calls the loader's exported functions; pqvk reaches
# Vulkan through volk, so the backend is built with VK_NO_PROTOTYPES and is handed its functions
# through ImGui_ImplVulkan_LoadFunctions. These objects come first on the link line, so the
# archive's copies are never pulled in.)
add_library(pqvk_imgui_backends STATIC
  ${PQVK_IMGUI_BACKEND_DIR}/imgui_impl_glfw.cpp
  ${PQVK_IMGUI_BACKEND_DIR}/imgui_impl_vulkan.cpp)
target_include_directories(pqvk_imgui_backends SYSTEM PUBLIC ${IMGUI_INCLUDE_DIRS} ${PQVK_IMGUI_BACKEND_HEADERS}
                                                      ${Vulkan_INCLUDE_DIRS})
target_compile_definitions(pqvk_imgui_backends PUBLIC VK_NO_PROTOTYPES)
target_link_libraries(pqvk_imgui_backends PUBLIC glfw ${IMGUI_LINK_LIBRARIES})

# The chat engine and the window's generation thread: no window code, shared by the GUI, the
# CLI and the tests.
add_library(pqvk_chat STATIC
  apps/chat/chat_engine.cpp
  apps/chat/chat_worker.cpp
  apps/chat/transcript.cpp)
target_include_directories(pqvk_chat PUBLIC ${CMAKE_SOURCE_DIR}/apps)
target_link_libraries(pqvk_chat PUBLIC pqvk_llm pqvk_tokenize nlohmann_json::nlohmann_json Threads::Threads)
target_compile_options(pqvk_chat PRIVATE ${PQVK_WARNINGS})

add_executable(pq-chat
  apps/pq-chat.cpp
  apps/chat/chat_ui.cpp
  apps/chat/cli.cpp
  apps/chat/gui.cpp
  apps/chat/vulkan_window.cpp)
target_link_libraries(pq-chat PRIVATE pqvk_chat pqvk_imgui_backends PNG::PNG CLI11::CLI11)
target_compile_definitions(pq-chat PRIVATE PQVK_DEFAULT_MODEL="${PQVK_DEFAULT_MODEL}")
target_compile_options(pq-chat PRIVATE ${PQVK_WARNINGS})

if(PQVK_BUILD_TESTS)
  find_program(PQVK_XVFB Xvfb)
  if(NOT PQVK_XVFB)
    message(FATAL_ERROR "pq-chat's window tests run on a virtual X server: install the Debian package xvfb "
                        "(tools/setup-debian.sh), or configure with -DPQVK_CHAT=OFF")
  endif()

  # The engine (formatting, trimming, KV-cache reuse, stop strings, regenerate, cancel) and the
  # Vulkan layer's presentation option, on the bundled model.
  add_executable(pq_chat_tests tests/test_chat.cpp tests/vk_test_env.cpp)
  target_include_directories(pq_chat_tests PRIVATE ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(pq_chat_tests PRIVATE pqvk_chat GTest::gtest GTest::gtest_main)
  target_compile_definitions(pq_chat_tests PRIVATE PQVK_DEFAULT_MODEL="${PQVK_DEFAULT_MODEL}"
                                                   PQVK_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  target_compile_options(pq_chat_tests PRIVATE ${PQVK_WARNINGS})
  add_test(NAME chat.engine COMMAND pq_chat_tests)

  # Checks a screenshot against the transcript's record of what was drawn.
  add_executable(pq_chat_png_check tests/pq_chat_png_check.cpp)
  target_link_libraries(pq_chat_png_check PRIVATE PNG::PNG nlohmann_json::nlohmann_json)
  target_compile_options(pq_chat_png_check PRIVATE ${PQVK_WARNINGS})

  # Scripted sessions, compared with pq-run (tests/pq_chat_check.cmake says what is checked).
  # DEVICE 0: the model on Vulkan device 0 (the GPU path, on lavapipe in CI); cpu: the CPU reference.
  set(PQVK_CHAT_CHECK -DPQ_CHAT=$<TARGET_FILE:pq-chat> -DPQ_RUN=$<TARGET_FILE:pq-run> -DPQ_INFO=$<TARGET_FILE:pq-info>
      -DPQ_QUANTIZE=$<TARGET_FILE:pq-quantize> -DMODEL_DIR=${CMAKE_SOURCE_DIR}/models/pqvk-brown-10m
      -DPNG_CHECK=$<TARGET_FILE:pq_chat_png_check> -DWITH_XVFB=${CMAKE_SOURCE_DIR}/tests/run_with_xvfb.sh
      -DDATA=${CMAKE_SOURCE_DIR}/tests/data/chat -DOUT=${CMAKE_BINARY_DIR}/pq-chat-tests)
  add_test(NAME chat.gui-script COMMAND ${CMAKE_COMMAND} ${PQVK_CHAT_CHECK} -DMODE=gui -DDEVICE=0
           -P ${CMAKE_SOURCE_DIR}/tests/pq_chat_check.cmake)
  add_test(NAME chat.cli-pipe COMMAND ${CMAKE_COMMAND} ${PQVK_CHAT_CHECK} -DMODE=cli -DDEVICE=0
           -P ${CMAKE_SOURCE_DIR}/tests/pq_chat_check.cmake)
  add_test(NAME chat.cli-pipe-cpu COMMAND ${CMAKE_COMMAND} ${PQVK_CHAT_CHECK} -DMODE=cli -DDEVICE=cpu
           -P ${CMAKE_SOURCE_DIR}/tests/pq_chat_check.cmake)
  add_test(NAME chat.template COMMAND ${CMAKE_COMMAND} ${PQVK_CHAT_CHECK} -DMODE=template -DDEVICE=cpu
           -P ${CMAKE_SOURCE_DIR}/tests/pq_chat_check.cmake)
  add_test(NAME chat.errors COMMAND ${CMAKE_COMMAND} ${PQVK_CHAT_CHECK} -DMODE=errors
           -P ${CMAKE_SOURCE_DIR}/tests/pq_chat_check.cmake)
  # The PolarQuant KV cache (--kv-type) on the CPU reference and on the GPU.
  add_test(NAME chat.kv-pq8-cpu COMMAND sh -c "printf 'Tell me about the city.\\n' | \"$1\" --cli --cpu --kv-type pq8 -n 8 --temp 0"
           sh $<TARGET_FILE:pq-chat>)
  set_tests_properties(chat.kv-pq8-cpu PROPERTIES PASS_REGULAR_EXPRESSION "CPU reference.*max_tokens \\| 8 tokens")
  add_test(NAME chat.kv-pq4-gpu COMMAND sh -c "printf 'Tell me about the city.\\n' | \"$1\" --cli --device 0 --kv-type pq4 -n 8 --temp 0"
           sh $<TARGET_FILE:pq-chat>)
  set_tests_properties(chat.kv-pq4-gpu PROPERTIES PASS_REGULAR_EXPRESSION "on (llvmpipe|NVIDIA|AMD|Intel).*max_tokens \\| 8 tokens"
                       ENVIRONMENT "PQVK_VALIDATION=1")
  # By default on the CPU reference exactly where the only Vulkan device is a CPU implementation.
  add_test(NAME chat.cpu-default COMMAND ${CMAKE_COMMAND} -E env --unset=PQVK_DEVICE ${CMAKE_COMMAND}
           -DPQ_INFO=$<TARGET_FILE:pq-info> -DPQ_CHAT=$<TARGET_FILE:pq-chat> -DOUT=${CMAKE_BINARY_DIR}/pq-chat-tests
           -P ${CMAKE_SOURCE_DIR}/tests/cpu_default_check.cmake)
  set_tests_properties(chat.engine chat.gui-script chat.cli-pipe chat.cli-pipe-cpu chat.template chat.cpu-default
                       chat.errors PROPERTIES ENVIRONMENT "PQVK_VALIDATION=1" TIMEOUT 300)
endif()
