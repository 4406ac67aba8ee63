#!/usr/bin/env python3
"""Compares pqvk's Jinja chat-template renderer (through `pq-info --chat-template`) with Python's
jinja2 (Debian python3-jinja2) called the way HuggingFace's apply_chat_template calls it:
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loopcontrols and the
{% generation %} tag), tojson replaced by json.dumps(ensure_ascii=False, ...), globals
raise_exception and strftime_now; variables messages, tools (None when absent), documents (None),
add_generation_prompt, bos_token, eos_token and the conversation's other keys.

Two sets of checks:
  --templates DIR --conversations DIR   every real template with every conversation, with and
                                        without the generation prompt
  --cases FILE                          small templates (a JSON list of {"name", "template",
                                        "variables"?}) exercising the language one feature at a time

Each check passes when both render the same bytes, or both raise: the same exception class and
message (syntax errors: the same class and line). pq-info must never crash (exit 1 on errors).
Exit status 0 when every check passes; the failures are printed.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(Extension):
    """HuggingFace's {% generation %} ... {% endgeneration %}: renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_environment()


def reference(source, variables):
    """('ok', text) or ('error', class name, message, line)."""
    try:
        return ("ok", ENV.from_string(source).render(**variables))
    except jinja2.exceptions.TemplateSyntaxError as e:
        return ("error", type(e).__name__, e.message or "", e.lineno)
    except Exception as e:  # what the template raised while rendering
        return ("error", type(e).__name__, str(e), None)


def template_variables(conversation, add_generation_prompt, bos, eos):
    v = {"messages": conversation["messages"], "tools": conversation.get("tools"), "documents": None,
         "add_generation_prompt": add_generation_prompt, "bos_token": bos, "eos_token": eos}
    for k, x in conversation.items():
        if k not in ("messages", "tools"):
            v[k] = x
    return v


def run_pq_info(pq_info, template_path, conversation_path, add_generation_prompt, bos, eos):
    cmd = [pq_info, "--chat-template", template_path, "--messages", conversation_path, "--bos", bos, "--eos", eos]
    if add_generation_prompt:
        cmd.append("--add-generation-prompt")
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return ("hang", None)
    return (p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"))


def compare(label, source, template_path, conversation, conversation_path, agp, args, failures):
    variables = template_variables(conversation, agp, args.bos, args.eos)
    before = reference(source, variables)
    got = run_pq_info(args.pq_info, template_path, conversation_path, agp, args.bos, args.eos)
    after = reference(source, variables)  # strftime_now: a day may have turned meanwhile
    if got[0] == "hang":
        failures.append(f"{label}: pq-info did not finish in 60 s")
        return
    rc, out, err = got
    if rc not in (0, 1):
        failures.append(f"{label}: pq-info exited with {rc} (a crash?)\n{err}")
        return
    for ref in (before, after):
        if ref[0] == "ok" and rc == 0 and out == ref[1].encode("utf-8"):
            return
        if ref[0] == "error" and rc == 1:
            cls, msg, line = ref[1], ref[2], ref[3]
            if line is not None:  # a syntax error: the class and the line
                if f": {cls}: " in err and f":{line}:" in err.split(f": {cls}: ")[0]:
                    return
            elif f": {cls}: {msg}\n" in err:
                return
    if before[0] == "ok":
        want = "renders " + repr(before[1])
    else:
        want = f"raises {before[1]}: {before[2]}" + (f" (line {before[3]})" if before[3] else "")
    got_s = ("renders " + repr(out.decode("utf-8", "replace"))) if rc == 0 else ("fails: " + err.strip())
    failures.append(f"{label}:\n  jinja2 {want}\n  pq-info {got_s}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pq-info", required=True)
    ap.add_argument("--templates")
    ap.add_argument("--conversations")
    ap.add_argument("--cases")
    ap.add_argument("--bos", default="<s>")
    ap.add_argument("--eos", default="</s>")
    args = ap.parse_args()
    failures = []
    checks = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.templates and args.conversations:
            templates = sorted(f for f in os.listdir(args.templates) if f.endswith(".jinja"))
            conversations = sorted(f for f in os.listdir(args.conversations) if f.endswith(".json"))
            if not templates or not conversations:
                print("no templates or no conversations found")
                return 1
            for t in templates:
                tpath = os.path.join(args.templates, t)
                with open(tpath, encoding="utf-8", newline="") as f:
                    source = f.read()
                for c in conversations:
                    cpath = os.path.join(args.conversations, c)
                    with open(cpath, encoding="utf-8") as f:
                        conversation = json.load(f)
                    for agp in (False, True):
                        checks += 1
                        compare(f"{t} x {c} (add_generation_prompt={agp})", source, tpath, conversation, cpath, agp,
                                args, failures)
        if args.cases:
            with open(args.cases, encoding="utf-8") as f:
                cases = json.load(f)
            if not cases:
                print("no cases found")
                return 1
            names = set()
            for i, case in enumerate(cases):
                name = case["name"]
                if name in names:
                    failures.append(f"case {name}: the name is used twice")
                names.add(name)
                tpath = os.path.join(tmp, f"case{i}.jinja")
                cpath = os.path.join(tmp, f"case{i}.json")
                with open(tpath, "w", encoding="utf-8", newline="") as f:
                    f.write(case["template"])
                conversation = {"messages": []}
                conversation.update(case.get("variables", {}))
                with open(cpath, "w", encoding="utf-8") as f:
                    json.dump(conversation, f, ensure_ascii=False)
                checks += 1
                compare(f"case {name}", case["template"], tpath, conversation, cpath,
                        case.get("add_generation_prompt", False), args, failures)
    for f in failures:
        print("FAIL " + f + "\n")
    print(f"{checks - len(failures)} of {checks} checks pass (jinja2 {jinja2.__version__})")
    return 1 if failures or checks == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
