#!/usr/bin/env python3
"""Turn the official HL7 v2-to-FHIR mapping spreadsheets (CSV) into the compact tables the
`fhir_profiles::v2` translator loads.

Reads the CSV export of the HL7 v2-to-FHIR project (message, segment, data type and code
system maps; by default ../../../shared/data/v2-to-fhir, or the directory given) and writes
into fhir-profiles/v2/:

- messages.json     message structure -> segment -> the segment maps to apply, with the
                    FHIR resource each one fills and the map's condition; limited to the
                    structures and resource types the translator supports (SUPPORTED_*)
- segments.json     segment map -> rows (field, condition, FHIR path, FHIR type, data type
                    map, vocabulary map, assigned constant)
- datatypes.json    data type map -> rows (component, ... as above); every data type map
                    reachable from a used segment map
- codesystems.json  vocabulary map -> v2 code -> (FHIR code, display, system); every map
                    reachable from a used segment or data type map
- structures.json   message type^trigger -> message structure (table 0354)

What is ours rather than the maps' is listed at the top with its reason: a corrected
condition (CONDITION_CORRECTIONS), rows added (ADDED_ROWS: Coverage.status) and message map
entries left out (EXCLUDED_ENTRIES: PV1-20 to Coverage).

Conditions ("Computable ANTLR" column) are parsed here into a small expression tree
(see `parse_condition`); a row whose condition does not parse is left out and listed in
`skipped` of its table with the reason, so nothing is applied on a guess.
Assignments are kept only when they are a quoted constant. Rows with no FHIR path, or whose
path carries an editorial marker (`??`), are left out.

Usage: v2_tables.py [MAPS_DIR]. The output is deterministic.
"""
import csv
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "v2")
DEFAULT_MAPS = os.path.join(HERE, "..", "..", "..", "shared", "data", "v2-to-fhir")

# Message structures whose maps are used (A03, A04, A08, A13 have structure ADT_A01; A28 and
# A31 ADT_A05; A40 is ADT_A39, for which no message map exists: its PID is mapped with the
# PID[Patient] map and the MRG by hand, see src/v2/translate.rs).
SUPPORTED_STRUCTURES = ["ADT_A01", "ADT_A02", "ADT_A05", "ADT_A11", "ORU_R01", "VXU_V04"]
# Resource types the translator writes. MessageHeader, Provenance, Account, Basic, CareTeam,
# EpisodeOfCare, Device, PractitionerRole and ServiceRequest maps are not applied.
SUPPORTED_RESOURCES = [
    "Patient", "RelatedPerson", "Encounter", "Observation", "DiagnosticReport", "Specimen",
    "Immunization", "AllergyIntolerance", "Condition", "Coverage",
]
# Rows added to a segment map (and only these), each with why. A row with no field applies
# once per segment, whatever the segment holds. R4 requires Coverage.status, which the
# IN1[Coverage] map does not assign: an insurance a feed sends in an ADT message is the one
# the patient has now (v2 has no field for the policy's state; IN1-13, the plan's end, is
# kept in period.end), so `active`, as the Microsoft FHIR-Converter also writes.
ADDED_ROWS = {
    "IN1[Coverage]": [{"field": [], "path": "status", "value": "active"}],
}
# Conditions of the message maps that say what their siblings plainly do not mean, corrected
# (and only these): in VXU_V04 the ORDER.OBSERVATION OBX row reads AND where every other OBX
# row of every map reads OR, which would drop every single-valued OBX of an order.
CONDITION_CORRECTIONS = {
    ("VXU_V04", 'IF OBX-5 LST.count LESS THAN OR EQUALS 1 AND OBX-2 IS "NA"'):
        'IF OBX-5 LST.count LESS THAN OR EQUALS 1 OR OBX-2 IS "NA"',
}
# Entries of the message maps left out (segment, segment map), each with why.
EXCLUDED_ENTRIES = {
    ("PV1", "PV1[Coverage]"):
        "PV1-20 (financial class) alone cannot make a Coverage (no payor, which R4 requires), "
        "and added to the IN1's Coverage it would overwrite IN1-15 (plan type) in Coverage.type",
}
# Segment maps used besides those the message maps name (A40's PID).
EXTRA_SEGMENT_MAPS = ["PID[Patient]"]


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def find(directory, prefix, name):
    pattern = os.path.join(directory, glob.escape(f"{prefix}{name} - ") + "*.csv")
    files = sorted(glob.glob(pattern))
    if not files:
        # the spreadsheets are not consistent in case (`DTM[DateTime]` vs `DTM[dateTime]`)
        lowered = name.lower()
        for candidate in sorted(glob.glob(os.path.join(directory, glob.escape(prefix) + "*.csv"))):
            base = os.path.basename(candidate)[len(prefix):]
            if base.lower().startswith(lowered + " - "):
                return candidate
        return None
    return files[0]


# ---------------------------------------------------------------- conditions

TOKEN = re.compile(
    r'\s*(?:(?P<str>"[^"]*"|\'[^\']*\')|(?P<num>\d+(?![-.\w]))|(?P<ref>[A-Z][A-Z0-9]{1,2}(?:[-.]\d+)+)'
    r'|(?P<punct>[(),=<>])|(?P<word>[A-Za-z.]+))'
)


class Unparsed(Exception):
    pass


def tokens(text):
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise Unparsed(f"unexpected text at {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "word":
            value = value.upper()
            if value in ("IF", "IS"):
                # `IF` is noise (`... AND IF X VALUED`); `IS` is a copula (`IS VALUED`,
                # `IS "X"`, `IS NOT`, `IS IN`)
                continue
            if value == "VALUE":
                value = "VALUED"
        out.append((kind, value))
    return out


def parse_ref(text, owner):
    """`PID-11.9` -> [11, 9] within segment PID; `XTN.3` / `HD-3` -> [3] within the value.

    `owner` is (name, field, field data type): in a segment map a reference to the field's own
    data type (`CX.5` on IN1-10, a CX) means that component of the field."""
    m = re.fullmatch(r"([A-Z][A-Z0-9]{1,2})[-.](\d+(?:\.\d+)*)", text)
    if not m:
        raise Unparsed(f"bad reference {text}")
    path = [int(x) for x in m.group(2).split(".")]
    name, field, field_type = owner
    if m.group(1) == name:
        return path
    if field is not None and m.group(1) == field_type:
        return [field] + path
    raise Unparsed(f"reference {text} outside {name}")


def parse_condition(text, owner):
    toks = tokens(text)
    pos = 0

    def peek(k=0):
        return toks[pos + k] if pos + k < len(toks) else (None, None)

    def take():
        nonlocal pos
        tok = toks[pos] if pos < len(toks) else (None, None)
        pos += 1
        return tok

    def expect_word(*words):
        kind, value = take()
        if kind != "word" or value not in words:
            raise Unparsed(f"expected {words}, got {value}")
        return value

    def string_list():
        if take() != ("punct", "("):
            raise Unparsed("expected (")
        items = []
        while True:
            kind, value = take()
            if kind != "str":
                raise Unparsed("expected a quoted code")
            items.append(value[1:-1])
            kind, value = take()
            if value == ")":
                return items
            if value != ",":
                raise Unparsed("expected , or )")

    def number():
        kind, value = take()
        if kind != "num":
            raise Unparsed("expected a number")
        return int(value)

    def comparison():
        """GREATER THAN, LESS THAN OR EQUALS, EQUALS, =, >, ... -> gt, le, eq, ..."""
        kind, value = take()
        if value in ("=", "EQUALS"):
            return "eq"
        if value == ">":
            return "gt"
        if value == "<":
            return "lt"
        if value in ("GREATER", "LESS"):
            expect_word("THAN")
            base = "gt" if value == "GREATER" else "lt"
            if peek() == ("word", "OR"):
                take()
                expect_word("EQUALS", "EQUAL")
                return base[0] + "e"
            return base
        raise Unparsed(f"expected a comparison, got {value}")

    def atom():
        kind, value = peek()
        if value == "(":
            take()
            node = disjunction()
            if take() != ("punct", ")"):
                raise Unparsed("expected )")
            return node
        if kind != "ref":
            raise Unparsed(f"expected a field reference, got {value}")
        take()
        ref = parse_ref(value, owner)
        kind, value = peek()
        negate = False
        if value == "NOT":
            take()
            negate = True
            kind, value = peek()
        if value in ("VALUED", "EXIST", "EXISTS"):
            take()
            node = {"valued": ref}
        elif value == "DOES":
            take()
            expect_word("NOT")
            expect_word("EXIST", "EXISTS")
            node = {"not": {"valued": ref}}
        elif kind == "str":
            take()
            node = {"eq": [ref, value[1:-1]]}
        elif value in ("EQUALS", "EQUAL", "="):
            take()
            kind, value = take()
            if kind != "str":
                raise Unparsed("expected a quoted value")
            node = {"eq": [ref, value[1:-1]]}
        elif value == "IN":
            take()
            node = {"in": [ref, string_list()]}
        elif value in ("LST.COUNT", "COUNT"):
            take()
            node = {"count": [ref, comparison(), number()]}
        elif value == "LENGTH":
            take()
            node = {"length": [ref, comparison(), number()]}
        else:
            raise Unparsed(f"unknown test {value}")
        return {"not": node} if negate else node

    def conjunction():
        items = [atom()]
        while peek() == ("word", "AND"):
            take()
            items.append(atom())
        return items[0] if len(items) == 1 else {"all": items}

    def disjunction():
        items = [conjunction()]
        while peek() == ("word", "OR"):
            take()
            items.append(conjunction())
        return items[0] if len(items) == 1 else {"any": items}

    tree = disjunction()
    if pos != len(toks):
        raise Unparsed(f"trailing text {toks[pos:]}")
    return tree


# ---------------------------------------------------------------- rows

def constant(text):
    text = text.strip()
    m = re.fullmatch(r'"([^"]*)"', text)
    if not m:
        return None
    value = m.group(1).strip()
    if value.startswith("http") and value.endswith("."):
        value = value[:-1]  # `http://hl7.org/fhir/sid/us-ssn.`: a sentence's period
    return value


def map_rows(path, owner, skipped, name):
    """The mapping rows of a segment or data type map."""
    rows = []
    for r in read(path)[2:]:
        r = r + [""] * (19 - len(r))
        ident = r[1].strip()
        m = re.fullmatch(r"([A-Z][A-Z0-9]{1,2})[-.](\d+)(?:\.(\d+))?", ident)
        fhir_path = r[9].strip()
        if not m or not fhir_path:
            continue
        assigned_in_path = re.fullmatch(r'([A-Za-z.\[\]0-9]+)="([^"]*)"', fhir_path)
        if assigned_in_path:
            # `status="finished"`: a constant written into the path column
            fhir_path = assigned_in_path.group(1)
            r[16] = '"' + assigned_in_path.group(2) + '"'

        if "??" in fhir_path or " " in fhir_path:
            skipped.append({"map": name, "field": ident, "reason": f"path {fhir_path!r}"})
            continue
        row = {"field": [int(m.group(2))] + ([int(m.group(3))] if m.group(3) else [])}
        cond_text = r[6].strip()
        if cond_text:
            field = int(m.group(2)) if not m.group(3) and len(owner) == 3 else None
            try:
                row["if"] = parse_condition(cond_text, (owner, field, r[3].strip()))
            except Unparsed as e:
                skipped.append({"map": name, "field": ident, "reason": f"condition {cond_text!r}: {e}"})
                continue
        row["path"] = fhir_path
        if r[11].strip():
            row["type"] = r[11].strip()
        if r[14].strip():
            row["map"] = r[14].strip()
        if r[15].strip():
            row["vocab"] = r[15].strip().replace(" ", "")
        if r[16].strip():
            value = constant(r[16])
            if value is None:
                skipped.append({"map": name, "field": ident, "reason": f"assignment {r[16].strip()!r}"})
                continue
            row["value"] = value
        rows.append(row)
    return rows


def main():
    maps = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MAPS
    skipped = []
    messages = {}
    segment_names = list(EXTRA_SEGMENT_MAPS)
    for structure in SUPPORTED_STRUCTURES:
        path = find(os.path.join(maps, "messages"), "HL7 Message - FHIR R4_ ", structure)
        entries = []
        for r in read(path)[2:]:
            r = r + [""] * (14 - len(r))
            segment = r[2].strip(" []{}")
            target, seg_map = r[9].strip(), r[10].strip()
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", segment) or not seg_map:
                continue
            resource = re.match(r"[A-Za-z]+", target)
            if not resource or resource.group(0) not in SUPPORTED_RESOURCES:
                continue
            # the group the segment sits in (ORU_R01.PATIENT_RESULT.ORDER_OBSERVATION.OBX)
            group = ".".join(r[1].strip().split(".")[1:-1])
            excluded = EXCLUDED_ENTRIES.get((segment, seg_map))
            if excluded:
                skipped.append({"map": structure, "field": segment, "reason": excluded})
                continue
            entry = {"segment": segment, "group": group, "resource": resource.group(0),
                     "label": target, "map": seg_map}
            cond_text = r[6].strip()
            cond_text = CONDITION_CORRECTIONS.get((structure, cond_text), cond_text)
            if cond_text:
                try:
                    entry["if"] = parse_condition(cond_text, (segment, None, None))
                except Unparsed as e:
                    skipped.append({"map": structure, "field": segment, "reason": f"condition {cond_text!r}: {e}"})
                    continue
            entries.append(entry)
            if seg_map not in segment_names:
                segment_names.append(seg_map)
        messages[structure] = entries

    segments = {}
    for name in segment_names:
        path = find(os.path.join(maps, "segments"), "HL7 Segment - FHIR R4_ ", name)
        if path is None:
            skipped.append({"map": name, "reason": "no such segment map"})
            continue
        segments[name] = map_rows(path, name[:3], skipped, name) + ADDED_ROWS.get(name, [])

    datatypes = {}
    vocabs = set()
    pending = [row["map"] for rows in segments.values() for row in rows if "map" in row]
    for rows in segments.values():
        vocabs.update(row["vocab"] for row in rows if "vocab" in row)
    while pending:
        name = pending.pop()
        if name in datatypes:
            continue
        path = find(os.path.join(maps, "datatypes"), "HL7 Data Type - FHIR R4_ ", name)
        if path is None:
            datatypes[name] = None
            continue
        owner = name.split("[")[0]
        rows = map_rows(path, owner, skipped, name)
        datatypes[name] = rows
        pending.extend(row["map"] for row in rows if "map" in row)
        vocabs.update(row["vocab"] for row in rows if "vocab" in row)
    missing = sorted(k for k, v in datatypes.items() if v is None)
    for name in missing:
        skipped.append({"map": name, "reason": "no such data type map"})
    datatypes = {k: v for k, v in datatypes.items() if v is not None}

    codesystems = {}
    for name in sorted(vocabs):
        path = find(os.path.join(maps, "codesystems"), "HL7 Concept Map_ ", name.replace("/", ""))
        if path is None:
            skipped.append({"map": name, "reason": "no such concept map"})
            continue
        table = {}
        for r in read(path)[2:]:
            r = r + [""] * (12 - len(r))
            code, target, system = r[0].strip(), r[6].strip(), r[9].strip()
            if not code or not target or r[3].strip():
                continue
            display = r[8].strip() or r[7].strip()
            table.setdefault(code, {"code": target, "display": display, "system": system})
        codesystems[name] = table

    structures = {}
    for r in read(find(os.path.join(maps, "codesystems"), "HL7 Concept Map_ ", "MessageStructure"))[2:]:
        structure = r[0].strip()
        m = re.fullmatch(r"([A-Z]{3})_[A-Z0-9]{3}", structure)
        if not m:
            continue
        for trigger in re.findall(r"[A-Z]\d\d", r[1]):
            structures.setdefault(f"{m.group(1)}^{trigger}", structure)

    os.makedirs(OUT, exist_ok=True)
    outputs = {
        "messages.json": messages,
        "segments.json": segments,
        "datatypes.json": dict(sorted(datatypes.items())),
        "codesystems.json": codesystems,
        "structures.json": dict(sorted(structures.items())),
        "skipped.json": skipped,
    }
    for file, data in outputs.items():
        with open(os.path.join(OUT, file), "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
            f.write("\n")
    print(f"{len(messages)} message maps, {len(segments)} segment maps, {len(datatypes)} data type maps, "
          f"{len(codesystems)} vocabulary maps; {len(skipped)} rows skipped (v2/skipped.json)")


if __name__ == "__main__":
    main()
