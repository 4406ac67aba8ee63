# pq-chat's scripted sessions (ctest: chat.gui-script, chat.cli-pipe, chat.cli-pipe-cpu,
# chat.template, chat.errors), run as
#   cmake -DMODE=gui|cli|template|errors -DDEVICE=0|cpu -DPQ_CHAT=... -DPQ_RUN=... -DPQ_INFO=...
#         -DPQ_QUANTIZE=... -DMODEL_DIR=models/pqvk-brown-10m -DPNG_CHECK=...
#         -DWITH_XVFB=tests/run_with_xvfb.sh -DDATA=tests/data/chat -DOUT=<dir> -P tests/pq_chat_check.cmake
# with PQVK_VALIDATION=1: every session must end with no Vulkan validation message (pq-chat
# counts them, exits 1 and records them in its transcript). DEVICE: where pq-chat and pq-run run
# the model, a Vulkan device index (--device N: the GPU path, also where the only device is
# lavapipe) or cpu (--cpu: the CPU reference).
#
# The equivalence with pq-run: for the plain chat format (the bundled model's) a reply generated
# from an empty KV cache is exactly what
#   pq-run -p "<the formatted prompt>" --temp T --seed S -n N --stop "\nUser:"
# prints after echoing the prompt: same prompt ids (BOS + the text), same sampler and seed, same
# decode path, same stop string. pq-chat writes each generation's prompt, seed and reply to its
# transcript (--transcript-out); this script runs pq-run on that prompt and compares the text.
#
#   gui     the window on Xvfb (tests/run_with_xvfb.sh) with --script data/gui.txt: two messages typed through
#           GLFW's input callbacks (the second has line breaks, typed as Shift+Enter; Enter sends),
#           greedy, 20 tokens. Checks: no errors, no validation messages, the first reply equals
#           pq-run's, the second message arrived with its line breaks and its prompt reused the
#           cache, and the screenshot shows the text of all four messages (pq_chat_png_check).
#   cli     --cli with data/cli.txt piped to stdin, sampled (temperature 0.8, seed 7), 12 tokens,
#           --no-kv-reuse so that every reply starts from an empty cache: a message, /regen (seed
#           8), a follow-up, /system + /reset, a message, /quit (the last line is never sent).
#           Checks: stdout is exactly the replies, the prompts are the conversation formatted in
#           the plain format, each reply equals pq-run's for its prompt and seed.
#   template  the bundled model quantized with a Jinja chat template beside it (chat_template.jinja,
#           kept in the .pqm): pq-info renders the conversation with it, pq-chat --cli formats its
#           prompts with it (format "jinja") and replies as pq-run --chat does; a template that does
#           not parse makes pq-run --chat, pq-chat and pq-info fail with exit status 1 and the error's
#           position, never crash.
#   errors  a missing model in the terminal (exit status 1, a message naming the file); /load of
#           a missing file, a message, an unknown command (the model stays loaded, the message
#           is answered, both errors reported, exit status 1); the window with a missing model
#           (the error shown, exit status 1, not a crash); the window without a display.
cmake_minimum_required(VERSION 3.25)
file(MAKE_DIRECTORY ${OUT})
set(NL "\n")
set(SYSTEM "You are a helpful assistant.")
if(DEVICE STREQUAL "cpu")
  set(DEVICE_ARGS --cpu)
elseif(DEFINED DEVICE)
  set(DEVICE_ARGS --device ${DEVICE})
endif()

function(fail msg)
  message(SEND_ERROR "FAIL: ${msg}")
endfunction()

# json_get(<var> <json> <path...>): the value, or fails.
macro(json_get var json)
  string(JSON ${var} ERROR_VARIABLE json_err GET "${json}" ${ARGN})
  if(json_err)
    message(FATAL_ERROR "transcript: ${ARGN}: ${json_err}")
  endif()
endmacro()

# json_length(<var> <json> <path...>): the length of an array, or fails.
macro(json_length var json)
  string(JSON ${var} ERROR_VARIABLE json_err LENGTH "${json}" ${ARGN})
  if(json_err)
    message(FATAL_ERROR "transcript: ${ARGN}: ${json_err}")
  endif()
endmacro()

# Runs pq-run on a prompt and compares its text with a reply.
function(check_with_pq_run label prompt reply temp seed n)
  execute_process(COMMAND ${PQ_RUN} ${DEVICE_ARGS} -p "${prompt}" --temp ${temp} --seed ${seed} -n ${n} --stop "${NL}User:" -q
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    fail("${label}: pq-run exited with ${rc}: ${err}")
    return()
  endif()
  set(expected "${prompt}${reply}${NL}")
  if(NOT out STREQUAL expected)
    fail("${label}: pq-chat's reply differs from pq-run's\n  pq-run printed: [${out}]\n  pq-chat (prompt + reply): [${expected}]")
  else()
    message(STATUS "${label}: reply equals pq-run's: [${reply}]")
  endif()
endfunction()

function(check_clean_transcript json label)
  json_get(nerr "${json}" errors)
  if(NOT nerr STREQUAL "[]")
    fail("${label}: errors: ${nerr}")
  endif()
  json_get(nval "${json}" validation_messages)
  if(NOT nval EQUAL 0)
    fail("${label}: ${nval} Vulkan validation messages")
  endif()
endfunction()

# The transcript's device: the CPU reference exactly when DEVICE is cpu.
function(check_device json label)
  json_get(device "${json}" device)
  if((DEVICE STREQUAL "cpu") AND NOT device STREQUAL "CPU reference")
    fail("${label}: --cpu ran on ${device}")
  elseif(NOT DEVICE STREQUAL "cpu" AND device STREQUAL "CPU reference")
    fail("${label}: --device ${DEVICE} ran on the CPU reference")
  endif()
endfunction()

if(MODE STREQUAL "gui")
  set(png ${OUT}/gui.png)
  set(tr ${OUT}/gui.json)
  file(REMOVE ${png} ${tr})
  execute_process(COMMAND sh ${WITH_XVFB}
                          ${PQ_CHAT} ${DEVICE_ARGS} --script ${DATA}/gui.txt --screenshot ${png} --transcript-out ${tr}
                          --system "${SYSTEM}" --temp 0 -n 20 --width 1280 --height 800 --timeout 240
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pq-chat (window) exited with ${rc}\n${out}\n${err}")
  endif()
  file(READ ${tr} json)
  check_clean_transcript("${json}" gui)
  check_device("${json}" gui)
  json_get(mode "${json}" mode)
  json_get(format "${json}" model format)
  json_length(n "${json}" generations)
  if(NOT mode STREQUAL "gui" OR NOT format STREQUAL "plain" OR NOT n EQUAL 2)
    fail("gui: expected 2 generations in the plain format from the window, got ${n} (${mode}, ${format})")
  endif()
  json_get(user0 "${json}" generations 0 user)
  json_get(prompt0 "${json}" generations 0 prompt)
  json_get(reply0 "${json}" generations 0 reply)
  json_get(stop0 "${json}" generations 0 stop)
  if(NOT prompt0 STREQUAL "System: ${SYSTEM}${NL}User: Tell me about the city.${NL}Assistant: ")
    fail("gui: first prompt is [${prompt0}]")
  endif()
  check_with_pq_run(gui-turn-1 "${prompt0}" "${reply0}" 0 0 20)
  json_get(user1 "${json}" generations 1 user)
  if(NOT user1 STREQUAL "Write two lines:${NL}the first,${NL}the second.")
    fail("gui: the second message (typed with Shift+Enter line breaks) arrived as [${user1}]")
  endif()
  json_get(reused1 "${json}" generations 1 reused_tokens)
  json_get(ptok0 "${json}" generations 0 prompt_tokens)
  if(reused1 LESS ptok0)
    fail("gui: the second prompt reused ${reused1} cached tokens, fewer than the first prompt's ${ptok0}")
  endif()
  execute_process(COMMAND ${PNG_CHECK} ${png} ${tr} 4 OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  message(STATUS "screenshot ${png}:\n${out}${err}")
  if(NOT rc EQUAL 0)
    fail("gui: the screenshot does not show the transcript")
  endif()

elseif(MODE STREQUAL "cli")
  set(tr ${OUT}/cli-${DEVICE}.json)
  file(REMOVE ${tr})
  execute_process(COMMAND ${PQ_CHAT} ${DEVICE_ARGS} --cli --no-kv-reuse --system "${SYSTEM}" --temp 0.8 --seed 7 -n 12
                          --transcript-out ${tr}
                  INPUT_FILE ${DATA}/cli.txt OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pq-chat --cli exited with ${rc}\n${out}\n${err}")
  endif()
  message(STATUS "stderr:\n${err}")
  file(READ ${tr} json)
  check_clean_transcript("${json}" cli)
  check_device("${json}" cli)
  json_length(n "${json}" generations)
  if(NOT n EQUAL 4)
    fail("cli: expected 4 generations (message, /regen, message, message after /reset; none after /quit), got ${n}")
  endif()
  set(stdout_expected "")
  foreach(i RANGE 0 3)
    json_get(prompt${i} "${json}" generations ${i} prompt)
    json_get(reply${i} "${json}" generations ${i} reply)
    json_get(seed${i} "${json}" generations ${i} seed)
    string(APPEND stdout_expected "${reply${i}}${NL}")
  endforeach()
  if(NOT out STREQUAL stdout_expected)
    fail("cli: stdout is not the streamed replies:\n[${out}]\nexpected\n[${stdout_expected}]")
  endif()
  json_get(regen1 "${json}" generations 1 regenerated)
  if(NOT regen1 OR NOT seed0 EQUAL 7 OR NOT seed1 EQUAL 8 OR NOT seed2 EQUAL 7)
    fail("cli: /regen should regenerate with seed 8 (seeds ${seed0} ${seed1} ${seed2}, regenerated ${regen1})")
  endif()
  set(p0 "System: ${SYSTEM}${NL}User: Tell me about the city.${NL}Assistant: ")
  string(STRIP "${reply1}" reply1_trimmed)
  set(p2 "${p0}${reply1_trimmed}${NL}User: What did the farmers do?${NL}Assistant: ")
  set(p3 "System: You answer in one line.${NL}User: Good morning.${NL}Assistant: ")
  foreach(i 0 1 2 3)
    set(want ${p${i}})
    if(i EQUAL 1)
      set(want ${p0})
    endif()
    if(NOT prompt${i} STREQUAL want)
      fail("cli: prompt ${i} is [${prompt${i}}], expected [${want}]")
    endif()
    check_with_pq_run(cli-generation-${i} "${prompt${i}}" "${reply${i}}" 0.8 ${seed${i}} 12)
  endforeach()

elseif(MODE STREQUAL "template")
  # The bundled model with a chat template: chat_template.jinja beside the checkpoint.
  set(TEMPLATE [=[{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- '[' + message['content'] | trim + ']\n' }}
    {%- else %}
        {{- '### ' + message['role'] | capitalize + ':\n' + message['content'] | trim + '\n\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}
]=])
  function(quantize_with_template dir template out)
    file(REMOVE_RECURSE ${dir})
    file(COPY ${MODEL_DIR}/ DESTINATION ${dir})
    file(WRITE ${dir}/chat_template.jinja "${template}")
    execute_process(COMMAND ${PQ_QUANTIZE} ${dir} ${out} --bits 5 --quiet OUTPUT_QUIET ERROR_VARIABLE err RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "pq-quantize ${dir}: ${err}")
    endif()
  endfunction()
  set(model ${OUT}/brown-template.pqm)
  quantize_with_template(${OUT}/brown-template "${TEMPLATE}" ${model})
  set(p0 "[${SYSTEM}]${NL}### User:${NL}Tell me about the city.${NL}${NL}### Assistant:${NL}")
  # pq-info renders the model's own template.
  file(WRITE ${OUT}/conversation.json "{\"messages\": [{\"role\": \"system\", \"content\": \"${SYSTEM}\"}, {\"role\": \"user\", \"content\": \" Tell me about the city. \"}]}")
  execute_process(COMMAND ${PQ_INFO} ${model} --messages ${OUT}/conversation.json --add-generation-prompt
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR NOT out STREQUAL "${p0}")
    fail("pq-info ${model} --messages: exit ${rc}, printed [${out}] (expected [${p0}]) ${err}")
  endif()
  # pq-chat formats with it, and replies as pq-run --chat does.
  set(tr ${OUT}/template.json)
  file(REMOVE ${tr})
  file(WRITE ${OUT}/template-script.txt "Tell me about the city.${NL}")
  execute_process(COMMAND ${PQ_CHAT} ${DEVICE_ARGS} --cli -m ${model} --system "${SYSTEM}" --temp 0 -n 10
                          --transcript-out ${tr}
                  INPUT_FILE ${OUT}/template-script.txt OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pq-chat --cli with a templated model exited with ${rc}\n${out}\n${err}")
  endif()
  file(READ ${tr} json)
  check_clean_transcript("${json}" template)
  check_device("${json}" template)
  json_get(format "${json}" model format)
  json_get(prompt0 "${json}" generations 0 prompt)
  json_get(reply0 "${json}" generations 0 reply)
  if(NOT format STREQUAL "jinja" OR NOT prompt0 STREQUAL "${p0}")
    fail("template: pq-chat used format ${format} and the prompt [${prompt0}], expected jinja and [${p0}]")
  endif()
  execute_process(COMMAND ${PQ_RUN} ${DEVICE_ARGS} -m ${model} --chat --system "${SYSTEM}" -p "Tell me about the city."
                          --temp 0 -n 10 -q
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR NOT out STREQUAL "${reply0}${NL}")
    fail("template: pq-run --chat exited with ${rc} and printed [${out}], pq-chat replied [${reply0}]\n${err}")
  else()
    message(STATUS "template: pq-chat's reply equals pq-run --chat's: [${reply0}]")
  endif()
  # A template that does not parse: a clear error (the position), exit status 1, in every app.
  set(bad ${OUT}/brown-bad-template.pqm)
  quantize_with_template(${OUT}/brown-bad-template "{{ messages[0] }}\n{% for m in messages %}{{ m.content }" ${bad})
  foreach(cmd "${PQ_RUN};${DEVICE_ARGS};-m;${bad};--chat;-p;Hello;-n;2"
              "${PQ_CHAT};${DEVICE_ARGS};--cli;-m;${bad}"
              "${PQ_INFO};${bad};--messages;${OUT}/conversation.json")
    execute_process(COMMAND ${cmd} INPUT_FILE ${OUT}/template-script.txt OUTPUT_VARIABLE out ERROR_VARIABLE err
                    RESULT_VARIABLE rc)
    if(NOT rc EQUAL 1 OR NOT err MATCHES "brown-bad-template.pqm.*chat template:2:[0-9]+: TemplateSyntaxError: ")
      fail("a template that does not parse: ${cmd} exited with ${rc}: ${err}")
    endif()
  endforeach()

elseif(MODE STREQUAL "errors")
  # A missing model in the terminal.
  execute_process(COMMAND ${PQ_CHAT} --cli -m /nonexistent/model.pqm INPUT_FILE ${DATA}/gui-errors.txt
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 1 OR NOT err MATCHES "pq-chat: error: .*/nonexistent/model.pqm")
    fail("cli with a missing model: exit ${rc} (expected 1), stderr [${err}]")
  endif()
  # A failed /load keeps the model; an unknown command is reported; both make the exit status 1.
  set(tr ${OUT}/cli-errors.json)
  execute_process(COMMAND ${PQ_CHAT} --cli --temp 0 -n 4 --transcript-out ${tr} INPUT_FILE ${DATA}/cli-errors.txt
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  file(READ ${tr} json)
  json_length(nerr "${json}" errors)
  json_get(err0 "${json}" errors 0)
  json_get(err1 "${json}" errors 1)
  json_length(n "${json}" generations)
  json_get(nval "${json}" validation_messages)
  if(NOT rc EQUAL 1 OR NOT nerr EQUAL 2 OR NOT err0 MATCHES "/nonexistent/other.pqm" OR NOT err1 MATCHES "/bogus"
     OR NOT n EQUAL 1 OR NOT nval EQUAL 0)
    fail("cli errors: exit ${rc}, errors ${nerr} [${err0}] [${err1}], generations ${n}, validation ${nval}\n${err}")
  endif()
  # The window with a missing model: the error is shown and reported, the message is refused.
  set(tr ${OUT}/gui-errors.json)
  execute_process(COMMAND sh ${WITH_XVFB}
                          ${PQ_CHAT} -m /nonexistent/model.pqm --script ${DATA}/gui-errors.txt
                          --screenshot ${OUT}/gui-errors.png --transcript-out ${tr} --timeout 120
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  file(READ ${tr} json)
  json_length(nerr "${json}" errors)
  json_get(err0 "${json}" errors 0)
  json_get(nval "${json}" validation_messages)
  if(NOT rc EQUAL 1 OR NOT nerr EQUAL 2 OR NOT err0 MATCHES "could not load the model: .*/nonexistent/model.pqm"
     OR NOT nval EQUAL 0 OR NOT EXISTS ${OUT}/gui-errors.png)
    fail("window with a missing model: exit ${rc}, ${nerr} errors [${err0}], validation ${nval}\n${err}")
  endif()
  # The window without a display: a clear error, not a crash.
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=DISPLAY --unset=WAYLAND_DISPLAY ${PQ_CHAT} --script ${DATA}/gui-errors.txt
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 1 OR NOT err MATCHES "pq-chat: error: cannot open a window.*--cli")
    fail("window without a display: exit ${rc} (expected 1), stderr [${err}]")
  endif()
else()
  message(FATAL_ERROR "MODE must be gui, cli, template or errors")
endif()
