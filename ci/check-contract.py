#!/usr/bin/env python3
"""Independent check of the MTOR/1 wire contract, with python-jsonschema (not the harness's validator).

Checks, from the repository root:
  * fixtures/schemas/**/*.schema.json: valid draft 2020-12 schemas (check_schema), the right `$schema`,
    a unique `$id` of the form the contract uses, a title and a description, only local `$ref`s that
    resolve, only standard 2020-12 keywords, patterns that compile, and message schemas whose
    `type` const matches their file name;
  * fixtures/corpus/valid: every event passes envelope.schema.json, the schema its `type` names and,
    where one exists, the intent's input (and, for intent.status, output) schema; every message type
    has an example; rest/ and intents/ examples pass the schema their file name names; ledger,
    audit-chain and cert.probe examples are internally consistent;
  * fixtures/corpus/invalid: every file fails, breaks exactly one rule, and breaks the one that
    EXPECTED.tsv gives (instance pointer and keyword), and EXPECTED.tsv lists exactly these files;
  * docs/asyncapi.yaml: AsyncAPI 3.0.0, every `$ref` resolves (files relative to docs/), every
    message type is on a channel, and every operation's messages belong to its channel.

Needs only `jsonschema` (4.18 or later) and `pyyaml`. Exit status 0 when everything holds, 1 when any
check fails, 2 when it cannot run. Usage: ci/check-contract.py [--root DIR] [-v]
"""

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
from pathlib import Path

try:
    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
except ImportError as e:  # pragma: no cover
    print(f"check-contract: missing dependency ({e}); pip install 'jsonschema>=4.18' 'pyyaml>=6'", file=sys.stderr)
    sys.exit(2)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_KEYS = ["proto", "type", "id", "ts", "corr", "body"]
# Events whose body carries an intent's input in body.input (as the harness checks them).
INPUT_CARRIERS = ("intent.submit", "task.assign", "federation.forward")
# Names of schemas that exist but failed their checks (reported once, not again for each example).
BROKEN = set()

# Every keyword of the JSON Schema 2020-12 vocabularies (core, applicator, unevaluated, validation,
# meta-data, format-annotation, content).
KEYWORDS_2020_12 = {
    "$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "$comment", "$defs",
    "prefixItems", "items", "contains", "additionalProperties", "properties", "patternProperties",
    "dependentSchemas", "propertyNames", "if", "then", "else", "allOf", "anyOf", "oneOf", "not",
    "unevaluatedItems", "unevaluatedProperties",
    "type", "const", "enum", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains", "minContains",
    "maxProperties", "minProperties", "required", "dependentRequired",
    "title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples",
    "format", "contentEncoding", "contentMediaType", "contentSchema",
}
SUBSCHEMA = {"additionalProperties", "items", "contains", "not", "if", "then", "else", "propertyNames",
             "unevaluatedItems", "unevaluatedProperties", "contentSchema"}
SUBSCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "dependentSchemas"}


class Checks:
    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failed = []

    def ok(self, what):
        self.passed += 1
        if self.verbose:
            print(f"ok   {what}")

    def fail(self, what, why):
        self.failed.append(what)
        print(f"FAIL {what}: {why}")

    def expect(self, cond, what, why):
        if cond:
            self.ok(what)
        else:
            self.fail(what, why)
        return cond


def pointer(path):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def resolve_pointer(doc, frag):
    """Resolves a JSON pointer fragment (without '#') in doc; raises KeyError/IndexError."""
    node = doc
    if frag in ("", "/"):
        return node if frag == "" else node[""]
    for raw in frag.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rel(path, root):
    return str(Path(path).relative_to(root))


# --- schemas ------------------------------------------------------------------------------------
def walk_schema(node, where, problems, refs):
    """Collects non-standard keywords, non-local refs and uncompilable patterns of one schema."""
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        problems.append(f"{where or '/'}: a schema must be an object or boolean")
        return
    for key, value in node.items():
        here = f"{where}/{key}"
        if key not in KEYWORDS_2020_12:
            problems.append(f"{here}: `{key}` is not a JSON Schema 2020-12 keyword")
        if key == "$ref":
            refs.append((here, value))
        elif key == "pattern" and isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                problems.append(f"{here}: pattern does not compile: {e}")
        elif key in SUBSCHEMA:
            walk_schema(value, here, problems, refs)
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                walk_schema(sub, f"{here}/{i}", problems, refs)
        elif key in SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                walk_schema(sub, f"{here}/{name}", problems, refs)


def expected_id(name):
    """Schema name (path below fixtures/schemas without .schema.json) -> the $id the contract uses."""
    if name.startswith("rest/"):
        return "urn:mtor:1:schema:rest:" + name[len("rest/"):]
    if name.startswith("intents/"):
        return "urn:mtor:1:schema:intent:" + name[len("intents/"):]
    if name.startswith("harness/"):
        return "urn:mtor:1:schema:harness:" + name[len("harness/"):]
    return "urn:mtor:1:schema:" + name


def check_schemas(root, checks):
    base = root / "fixtures/schemas"
    validators, ids = {}, {}
    files = sorted(base.rglob("*.json"))
    if not files:
        checks.fail("fixtures/schemas", "no schema files")
        return validators
    for path in files:
        what = rel(path, root)
        name = path.relative_to(base).as_posix()
        if not name.endswith(".schema.json"):
            checks.fail(what, "schema files are named <name>.schema.json")
            continue
        name = name[: -len(".schema.json")]
        try:
            schema = load_json(path)
        except (OSError, ValueError) as e:
            checks.fail(what, f"not JSON: {e}")
            continue
        problems = []
        if not isinstance(schema, dict):
            checks.fail(what, "not a JSON object")
            continue
        if schema.get("$schema") != DRAFT:
            problems.append(f"$schema is {schema.get('$schema')!r}, want {DRAFT!r}")
        sid = schema.get("$id")
        if sid != expected_id(name):
            problems.append(f"$id is {sid!r}, want {expected_id(name)!r}")
        elif sid in ids:
            problems.append(f"$id {sid} also used by {ids[sid]}")
        ids.setdefault(sid, what)
        for meta in ("title", "description"):
            if not isinstance(schema.get(meta), str) or not schema[meta].strip():
                problems.append(f"no {meta}")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            problems.append(f"not a valid 2020-12 schema: {e.message} at {pointer(e.absolute_path)}")
        refs = []
        walk_schema(schema, "", problems, refs)
        for where, target in refs:
            if not isinstance(target, str) or not target.startswith("#"):
                problems.append(f"{where}: non-local $ref {target!r} (schemas must be self-contained)")
                continue
            try:
                resolve_pointer(schema, target[1:])
            except (KeyError, IndexError, ValueError, TypeError):
                problems.append(f"{where}: $ref {target} does not resolve")
        if "/" not in name and name != "envelope":
            props = schema.get("properties", {})
            const = props.get("type", {}).get("const") if isinstance(props.get("type"), dict) else None
            if const != name:
                problems.append(f"properties.type.const is {const!r}, want {name!r} (the file name)")
            if not set(ENVELOPE_KEYS) <= set(schema.get("required", [])):
                problems.append(f"required must include {ENVELOPE_KEYS}")
        if checks.expect(not problems, what, "; ".join(problems)):
            validators[name] = Draft202012Validator(schema)
        else:
            BROKEN.add(name)
    if "envelope" not in validators:
        checks.fail("fixtures/schemas/envelope.schema.json", "missing or invalid")
    return validators


# --- validation ---------------------------------------------------------------------------------
def violations(validator, value, prefix=""):
    out = set()
    for e in validator.iter_errors(value):
        out.add((prefix + pointer(e.absolute_path), e.validator if e.validator is not None else "false"))
    return out


def event_violations(v, event):
    """What the harness reports for one event: envelope, type schema, intent input (and status output)."""
    found = violations(v["envelope"], event)
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str):
        return found
    if v.get(kind) is None and kind in BROKEN:
        found.add(("/type", "schema-broken"))
        return found
    if kind not in v:
        # As the harness does; not repeated when the envelope already rejects the type's shape.
        if not any(p == "/type" for p, _ in found):
            found.add(("/type", "known-type"))
        return found
    found |= violations(v[kind], event)
    body = event.get("body")
    if isinstance(body, dict) and isinstance(body.get("intent"), str):
        intent = body["intent"]
        if kind in INPUT_CARRIERS and "input" in body and f"intents/{intent}.input" in v:
            found |= violations(v[f"intents/{intent}.input"], body["input"], "/body/input")
        if kind == "intent.status" and "output" in body and f"intents/{intent}.output" in v:
            found |= violations(v[f"intents/{intent}.output"], body["output"], "/body/output")
    return found


def fmt(found):
    return ", ".join(f"[{k}] at {p!r}" for p, k in sorted(found)) or "nothing"


# --- semantic consistency of examples -------------------------------------------------------------
def es_number(x):
    """ECMAScript Number-to-string, as RFC 8785 requires."""
    if isinstance(x, bool) or isinstance(x, int):
        return json.dumps(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("JCS has no NaN or infinity")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:e([+-]\d+))?", repr(abs(x)))
    whole, frac, exp = m.group(1), m.group(2) or "", int(m.group(3) or 0)
    all_digits = whole + frac
    lead = len(all_digits) - len(all_digits.lstrip("0"))
    digits = all_digits.lstrip("0").rstrip("0")
    n, k = len(whole) + exp - lead, len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    mant = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mant}e{'+' if e >= 0 else '-'}{abs(e)}"


def jcs(v):
    """RFC 8785 JSON Canonicalization Scheme."""
    if isinstance(v, dict):
        keys = sorted(v, key=lambda s: s.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(v[k]) for k in keys) + "}"
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return es_number(v)
    return json.dumps(v, ensure_ascii=False)


def semantic_problems(kind, value):
    """Rules the schemas state in prose but cannot express, checked on the valid examples."""
    problems = []
    if kind in ("rest/statement", "rest/ledger-export"):
        for e in value.get("entries", []):
            total = sum(p["amount"] for p in e["postings"])
            if total:
                problems.append(f"ledger entry seq {e['seq']}: postings sum to {total}, not 0")
    if kind == "rest/audit-export":
        prev = None
        for r in value.get("records", []):
            body = {k: x for k, x in r.items() if k != "hash"}
            want = hashlib.sha256(jcs(body).encode("utf-8")).hexdigest()
            if r["hash"] != want:
                problems.append(f"audit seq {r['seq']}: hash is not sha256(JCS(record without hash)) = {want}")
            if r["seq"] == 1 and r["prev_hash"] != "0" * 64:
                problems.append("audit seq 1: prev_hash must be 64 zeros")
            if prev is not None and (r["seq"] != prev["seq"] + 1 or r["prev_hash"] != prev["hash"]):
                problems.append(f"audit seq {r['seq']}: does not chain to seq {prev['seq']}")
            prev = r
        if prev is not None and value.get("next_after") is None and value["head"] != {"seq": prev["seq"], "hash": prev["hash"]}:
            problems.append("audit head is not the last record of the final page")
    outputs = []
    if kind == "intents/cert.probe.output":
        outputs.append(value)
    if kind == "intent.status" and value["body"].get("intent") == "cert.probe" and "output" in value["body"]:
        outputs.append(value["body"]["output"])
    for out in outputs:
        want = hashlib.sha256(("cert.probe\n" + out["nonce"]).encode("utf-8")).hexdigest()
        if out["digest"] != want:
            problems.append(f"cert.probe digest is not sha256(\"cert.probe\\n\" + nonce) = {want}")
    inputs = []
    if kind == "intents/analyze-signal.input":
        inputs.append(value)
    if kind in INPUT_CARRIERS and value["body"].get("intent") == "analyze-signal":
        inputs.append(value["body"]["input"])
    for inp in inputs:
        try:
            n = len(base64.b64decode(inp["samples"], validate=True))
        except (binascii.Error, ValueError) as e:
            problems.append(f"analyze-signal samples are not base64: {e}")
            continue
        if n % 8:
            problems.append(f"analyze-signal samples decode to {n} bytes, not whole f32 I,Q pairs (8 bytes)")
    return problems


# --- corpus -------------------------------------------------------------------------------------
def check_valid(root, v, checks):
    base = root / "fixtures/corpus/valid"
    seen_types = set()
    events = sorted(base.glob("*.json"))
    if not events:
        checks.fail(rel(base, root), "no valid events")
    for path in events:
        what = rel(path, root)
        try:
            event = load_json(path)
        except (OSError, ValueError) as e:
            checks.fail(what, f"not JSON: {e}")
            continue
        kind = event.get("type") if isinstance(event, dict) else None
        stem = path.name[: -len(".json")]
        if not isinstance(kind, str) or not (stem == kind or stem.startswith(kind + ".")):
            checks.fail(what, f"file name must be <type>[.<variant>].json for its type {kind!r}")
            continue
        found = event_violations(v, event)
        if found:
            checks.fail(what, f"valid example breaks {fmt(found)}")
            continue
        problems = semantic_problems(kind, event)
        if checks.expect(not problems, what, "; ".join(problems)):
            seen_types.add(kind)
    message_types = sorted(n for n in v if "/" not in n and n != "envelope")
    missing = [t for t in message_types if t not in seen_types]
    checks.expect(not missing, "every message type has a valid example", f"no valid example for {missing}")
    for folder in ("rest", "intents"):
        files = sorted((base / folder).glob("*.json"))
        covered = set()
        for path in files:
            what = rel(path, root)
            name = f"{folder}/" + path.name[: -len(".json")].split("--")[0]
            if name not in v:
                checks.fail(what, f"no schema {name}.schema.json for this example (name it <schema>[--variant].json)")
                continue
            try:
                value = load_json(path)
            except (OSError, ValueError) as e:
                checks.fail(what, f"not JSON: {e}")
                continue
            found = violations(v[name], value)
            if found:
                checks.fail(what, f"valid example breaks {fmt(found)}")
                continue
            problems = semantic_problems(name, value)
            if checks.expect(not problems, what, "; ".join(problems)):
                covered.add(name)
        missing = sorted(n for n in v if n.startswith(folder + "/") and n not in covered)
        checks.expect(not missing, f"every {folder}/ schema has a valid example", f"none for {missing}")


def read_expected(path, checks):
    expected = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        checks.fail("fixtures/corpus/invalid/EXPECTED.tsv", str(e))
        return expected
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 3 or not cols[0] or not cols[2] or not (cols[1] == "" or cols[1].startswith("/")):
            checks.fail(f"EXPECTED.tsv line {n}", f"want <file>\\t<pointer ('' or /...)>\\t<keyword>, got {line!r}")
            continue
        if cols[0] in expected:
            checks.fail(f"EXPECTED.tsv line {n}", f"{cols[0]} listed twice")
            continue
        expected[cols[0]] = (cols[1], cols[2])
    return expected


def check_invalid(root, v, checks):
    base = root / "fixtures/corpus/invalid"
    expected = read_expected(base / "EXPECTED.tsv", checks)
    seen = set()
    for sub in ("", "intents"):
        for path in sorted((base / sub).glob("*.json")):
            name = path.relative_to(base).as_posix()
            what = rel(path, root)
            seen.add(name)
            subject, sep, rule = path.name[: -len(".json")].partition("--")
            if not sep or not subject or not rule:
                checks.fail(what, "invalid files are named <type>--<rule>.json")
                continue
            try:
                value = load_json(path)
            except (OSError, ValueError) as e:
                checks.fail(what, f"not JSON: {e}")
                continue
            if name not in expected:
                checks.fail(what, "not listed in EXPECTED.tsv")
                continue
            want = expected[name]
            if sub == "intents":
                schema = f"intents/{subject}"
                if schema not in v:
                    checks.fail(what, f"names no schema: {schema}.schema.json does not exist")
                    continue
                found = violations(v[schema], value)
            else:
                kind = value.get("type") if isinstance(value, dict) else None
                if subject != "envelope" and subject != kind:
                    checks.fail(what, f"named after {subject!r} but its type is {kind!r} (or name it envelope--...)")
                    continue
                found = event_violations(v, value)
                if subject == "envelope" and want not in violations(v["envelope"], value):
                    checks.fail(what, f"envelope.schema.json alone does not report [{want[1]}] at {want[0]!r}")
                    continue
            if not found:
                checks.fail(what, f"should be invalid but passes (EXPECTED: [{want[1]}] at {want[0]!r})")
            elif want not in found:
                checks.fail(what, f"EXPECTED [{want[1]}] at {want[0]!r}, got {fmt(found)}")
            elif len(found) > 1:
                checks.fail(what, f"breaks more than one rule: {fmt(found)}")
            else:
                checks.ok(what)
    for name in sorted(set(expected) - seen):
        checks.fail(f"EXPECTED.tsv: {name}", "listed but no such file")
    checks.expect(len(seen) >= 30, "at least 30 invalid examples", f"only {len(seen)}")


# --- AsyncAPI -----------------------------------------------------------------------------------
def all_refs(node, where=""):
    if isinstance(node, dict):
        for k, x in node.items():
            if k == "$ref":
                yield where, x
            else:
                yield from all_refs(x, f"{where}/{k}")
    elif isinstance(node, list):
        for i, x in enumerate(node):
            yield from all_refs(x, f"{where}/{i}")


def check_asyncapi(root, v, checks):
    docs = root / "docs"
    path = docs / "asyncapi.yaml"
    what = rel(path, root)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        checks.fail(what, f"cannot read: {e}")
        return
    if not isinstance(doc, dict):
        checks.fail(what, "not a YAML mapping")
        return
    checks.expect(str(doc.get("asyncapi")) == "3.0.0", f"{what}: asyncapi 3.0.0", f"asyncapi is {doc.get('asyncapi')!r}")
    info = doc.get("info") or {}
    checks.expect(info.get("title") and info.get("version") and (info.get("license") or {}).get("name"),
                  f"{what}: info has title, version and license", f"info is {info!r}")
    referenced_types = set()
    bad = []
    n_refs = 0
    for where, target in all_refs(doc):
        n_refs += 1
        if not isinstance(target, str):
            bad.append(f"{where}: $ref is not a string")
            continue
        file, _, frag = target.partition("#")
        try:
            if not file:
                resolve_pointer(doc, frag)
                continue
            target_path = (docs / file).resolve()
            if not target_path.is_file():
                bad.append(f"{where}: {target} does not exist")
                continue
            if frag:
                resolve_pointer(load_json(target_path), frag)
        except (KeyError, IndexError, ValueError, TypeError):
            bad.append(f"{where}: {target} does not resolve")
            continue
        m = re.fullmatch(r"\.\./fixtures/schemas/([^/]+)\.schema\.json", file)
        if m:
            referenced_types.add(m.group(1))
    checks.expect(n_refs and not bad, f"{what}: all {n_refs} $refs resolve", "; ".join(bad) or "no $ref at all")
    message_types = sorted(n for n in v if "/" not in n and n != "envelope")
    missing = [t for t in message_types if t not in referenced_types]
    checks.expect(not missing, f"{what}: a payload for every message type", f"no payload $ref for {missing}")
    # Every component message is on some channel, and operations only use their channel's messages.
    channels = doc.get("channels") or {}
    on_channel = set()
    for cname, channel in channels.items():
        for ref in ((channel or {}).get("messages") or {}).values():
            if isinstance(ref, dict) and isinstance(ref.get("$ref"), str):
                on_channel.add(ref["$ref"])
    components = sorted(((doc.get("components") or {}).get("messages") or {}))
    stray = [m for m in components if f"#/components/messages/{m}" not in on_channel]
    checks.expect(components and not stray, f"{what}: every component message is on a channel",
                  f"not on any channel: {stray}" if components else "no components.messages")
    problems = []
    for oname, op in (doc.get("operations") or {}).items():
        if (op or {}).get("action") not in ("send", "receive"):
            problems.append(f"{oname}: action must be send or receive")
        chan = ((op or {}).get("channel") or {}).get("$ref", "")
        for ref in (op or {}).get("messages") or []:
            target = (ref or {}).get("$ref", "")
            if not target.startswith(chan + "/messages/"):
                problems.append(f"{oname}: message {target} is not a message of {chan}")
    checks.expect(doc.get("operations") and not problems, f"{what}: operations use their channel's messages",
                  "; ".join(problems) or "no operations")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: the parent of ci/)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every passing check too")
    args = ap.parse_args()
    root = args.root.resolve()
    checks = Checks(args.verbose)
    validators = check_schemas(root, checks)
    if "envelope" in validators:
        check_valid(root, validators, checks)
        check_invalid(root, validators, checks)
    check_asyncapi(root, validators, checks)
    print(f"{checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
