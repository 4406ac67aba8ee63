# apps.cpu-default / chat.cpu-default: where every Vulkan device is a CPU implementation (lavapipe,
# SwiftShader), pq-run, pq-perplexity and pq-chat run the CPU reference by default and say so on
# stderr, and --device 0 still runs Vulkan; on a machine with a GPU they run on it without the
# note. Run as
#   cmake -E env --unset=PQVK_DEVICE cmake -DPQ_INFO=... [-DPQ_RUN=...] [-DPQ_PERPLEXITY=... -DTEXT=...]
#         [-DPQ_CHAT=...] -DOUT=<dir> -P tests/cpu_default_check.cmake
# (the checks of the apps given).
cmake_minimum_required(VERSION 3.25)
file(MAKE_DIRECTORY ${OUT})
set(NOTE "the only Vulkan device is a CPU implementation")

function(fail msg)
  message(SEND_ERROR "FAIL: ${msg}")
endfunction()

execute_process(COMMAND ${PQ_INFO} --json OUTPUT_VARIABLE info RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pq-info --json exited with ${rc}")
endif()
string(JSON n LENGTH "${info}" devices)
set(all_cpu TRUE)
math(EXPR last "${n} - 1")
foreach(i RANGE 0 ${last})
  string(JSON type GET "${info}" devices ${i} type)
  if(NOT type STREQUAL "cpu")
    set(all_cpu FALSE)
  endif()
endforeach()
message(STATUS "${n} Vulkan devices, all CPU implementations: ${all_cpu}")

# args: nothing for the case "default", --device 0 for the case "0".
macro(case_args case)
  set(args "")
  if("${case}" STREQUAL "0")
    set(args --device 0)
  endif()
endmacro()

function(expect_success label rc err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${label} exited with ${rc}: ${err}")
  endif()
endfunction()

# Checks that a run by default went to the CPU reference (with the note) exactly when every
# device is a CPU implementation, and that --device 0 ran on Vulkan without the note.
function(check label device_default err_default device_0 err_0)
  if(all_cpu AND (NOT device_default STREQUAL "CPU reference" OR NOT err_default MATCHES "${NOTE}"))
    fail("${label}: by default it ran on ${device_default} (expected the CPU reference and a note)\n${err_default}")
  endif()
  if(NOT all_cpu AND (device_default STREQUAL "CPU reference" OR err_default MATCHES "${NOTE}"))
    fail("${label}: by default it ran on ${device_default} with a GPU present\n${err_default}")
  endif()
  if(device_0 STREQUAL "CPU reference" OR err_0 MATCHES "${NOTE}")
    fail("${label}: --device 0 ran on the CPU reference\n${err_0}")
  endif()
  message(STATUS "${label}: by default on ${device_default}, with --device 0 on ${device_0}")
endfunction()

if(DEFINED PQ_RUN)
  foreach(case default 0)
    case_args(${case})
    execute_process(COMMAND ${PQ_RUN} ${args} -p "The" -n 2 --temp 0 OUTPUT_VARIABLE out ERROR_VARIABLE err_${case}
                    RESULT_VARIABLE rc)
    expect_success("pq-run ${args}" "${rc}" "${err_${case}}")
    string(REGEX MATCH " on ([^|\n]*) \\| load" m "${err_${case}}")
    string(STRIP "${CMAKE_MATCH_1}" device_${case})
  endforeach()
  check(pq-run "${device_default}" "${err_default}" "${device_0}" "${err_0}")
endif()

if(DEFINED PQ_PERPLEXITY)
  foreach(case default 0)
    case_args(${case})
    execute_process(COMMAND ${PQ_PERPLEXITY} ${args} -f ${TEXT} --ctx 32 --chunks 1 -q --json ${OUT}/ppl-${case}.json
                    OUTPUT_QUIET ERROR_VARIABLE err_${case} RESULT_VARIABLE rc)
    expect_success("pq-perplexity ${args}" "${rc}" "${err_${case}}")
    file(READ ${OUT}/ppl-${case}.json j)
    string(JSON device_${case} GET "${j}" device)
  endforeach()
  check(pq-perplexity "${device_default}" "${err_default}" "${device_0}" "${err_0}")
endif()

if(DEFINED PQ_CHAT)
  file(WRITE ${OUT}/cpu-default-script.txt "Hello.\n")
  foreach(case default 0)
    case_args(${case})
    execute_process(COMMAND ${PQ_CHAT} ${args} --cli --temp 0 -n 2 --transcript-out ${OUT}/chat-${case}.json
                    INPUT_FILE ${OUT}/cpu-default-script.txt OUTPUT_QUIET ERROR_VARIABLE err_${case} RESULT_VARIABLE rc)
    expect_success("pq-chat --cli ${args}" "${rc}" "${err_${case}}")
    file(READ ${OUT}/chat-${case}.json j)
    string(JSON device_${case} GET "${j}" device)
  endforeach()
  check(pq-chat "${device_default}" "${err_default}" "${device_0}" "${err_0}")
endif()
