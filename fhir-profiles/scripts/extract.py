#!/usr/bin/env python3
"""Extract the FHIR R4 definitions the gateway needs from the official package.

Reads the npm package `hl7.fhir.r4.examples@4.0.1` (it carries the core
StructureDefinitions, SearchParameters, ValueSets, CodeSystems and the Patient
CompartmentDefinition) and writes compact JSON into fhir-profiles/r4/:

- structure.json         every resource and data type: kind, base, and its elements
                         (cardinality, types, summary flag, required binding)
- valuesets.json         the codes of every value set bound `required` that can be
                         enumerated from the package's own CodeSystems
- terminology.json       every complete CodeSystem as an is-a hierarchy (code -> parents)
                         and every ValueSet expandable from the package (system -> codes),
                         for the token search modifiers :in, :not-in, :above and :below
- search-parameters.json every SearchParameter, one entry per (base, code), with the
                         expression narrowed to the branches of that base
- compartment-patient.json  resource type -> the parameters linking it to a Patient
- profiles.json          the resource profiles of the package (StructureDefinitions with
                         derivation `constraint`: vitalsigns, bp, shareablevalueset, ...)
                         keyed by canonical URL, each as a tree of the elements its snapshot
                         constrains beyond the base resource: cardinality, fixed and pattern
                         values, required bindings (their value sets go to valuesets.json),
                         types of choice elements, and slices with the conditions that
                         select their items. The snapshot holds the whole chain of base
                         profiles, so bp carries the constraints of vitalsigns.

Usage: extract.py [PACKAGE_DIR]   (without it, the package is fetched with `npm pack`)
The output is deterministic, so a re-run on the same package changes nothing.
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "r4")
PACKAGE = "hl7.fhir.r4.examples@4.0.1"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}


def package_dir(argv):
    if len(argv) > 1:
        return argv[1]
    tmp = tempfile.mkdtemp(prefix="fhir-r4-")
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")][0]
    with tarfile.open(os.path.join(tmp, tgz)) as tar:
        tar.extractall(tmp, filter="data")
    return os.path.join(tmp, "package")


def load(pkg, name):
    with open(os.path.join(pkg, name), encoding="utf-8") as f:
        return json.load(f)


def bundle_resources(pkg, name):
    return [e["resource"] for e in load(pkg, name)["entry"]]


def strip_version(url):
    return url.split("|")[0] if url else url


def ext_value(holder, url):
    for ext in holder.get("extension", []):
        if ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def element_types(el):
    types = []
    for t in el.get("type", []):
        code = t["code"]
        if code in SYSTEM_TYPES:
            code = SYSTEM_TYPES[code]
        entry = {"code": code}
        targets = [p.rsplit("/", 1)[-1] for p in t.get("targetProfile", [])]
        if targets:
            entry["targets"] = targets
        profiles = [p.rsplit("/", 1)[-1] for p in t.get("profile", [])]
        if profiles:
            entry["profile"] = profiles[0]
        types.append(entry)
    return types


def structure(pkg):
    sds = [r for r in bundle_resources(pkg, "Bundle-types.json") + bundle_resources(pkg, "Bundle-resources.json")
           if r["resourceType"] == "StructureDefinition"]
    out = {}
    regexes = {}
    for sd in sds:
        name = sd["id"]
        if sd.get("derivation") == "constraint":
            continue  # SimpleQuantity, MoneyQuantity: profiles of Quantity, checked as Quantity
        elements = []
        for el in sd["snapshot"]["element"]:
            path = el["path"]
            if sd["kind"] == "primitive-type":
                if path == name + ".value":
                    for t in el.get("type", []):
                        rx = ext_value(t, REGEX_EXT)
                        if rx:
                            regexes[name] = rx
                continue
            if path == name:
                continue
            entry = {"path": path, "min": el.get("min", 0), "max": el.get("max", "*")}
            if "contentReference" in el:
                entry["contentReference"] = el["contentReference"].lstrip("#")
            else:
                entry["types"] = element_types(el)
            if el.get("isSummary"):
                entry["summary"] = True
            if el.get("isModifier"):
                entry["modifier"] = True
            binding = el.get("binding")
            if binding and binding.get("strength") == "required" and binding.get("valueSet"):
                entry["requiredBinding"] = strip_version(binding["valueSet"])
            elements.append(entry)
        out[name] = {
            "kind": sd["kind"],
            "abstract": sd.get("abstract", False),
            "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None,
            "elements": elements,
        }
        if name in regexes:
            out[name]["regex"] = regexes[name]
    return out


def codesystem_codes(cs):
    codes = []

    def walk(concepts):
        for c in concepts:
            codes.append(c["code"])
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    return codes


def terminology_resources(pkg):
    """(resourceType, url) -> resource, for every ValueSet and CodeSystem of the package."""
    by_url = {}
    for r in bundle_resources(pkg, "Bundle-valuesets.json"):
        if r["resourceType"] in ("ValueSet", "CodeSystem"):
            by_url[(r["resourceType"], r["url"])] = r
    # v2/v3 tables are not all in the bundle; the single files cover the rest
    for fname in sorted(os.listdir(pkg)):
        if fname.startswith(("ValueSet-", "CodeSystem-")) and fname.endswith(".json"):
            r = load(pkg, fname)
            by_url.setdefault((r["resourceType"], r.get("url")), r)
    return by_url


def valuesets(by_url, required):
    def expand(url, seen):
        if url in seen:
            return None
        seen = seen | {url}
        vs = by_url.get(("ValueSet", url))
        if vs is None:
            return None
        codes = []
        compose = vs.get("compose", {})
        if compose.get("exclude"):
            return None
        for inc in compose.get("include", []):
            if inc.get("filter"):
                return None
            for nested in inc.get("valueSet", []):
                sub = expand(strip_version(nested), seen)
                if sub is None:
                    return None
                codes.extend(sub)
            if "concept" in inc:
                codes.extend(c["code"] for c in inc["concept"])
            elif "system" in inc:
                cs = by_url.get(("CodeSystem", inc["system"]))
                if cs is None or cs.get("content") != "complete":
                    return None
                codes.extend(codesystem_codes(cs))
        return sorted(set(codes)) if codes else None

    out = {}
    for url in sorted(required):
        codes = expand(url, frozenset())
        if codes:
            out[url] = codes
    return out


def valueset_systems(by_url, url, seen=frozenset()):
    """The code systems a value set draws its codes from."""
    vs = by_url.get(("ValueSet", url))
    if vs is None or url in seen:
        return set()
    systems = set()
    for inc in vs.get("compose", {}).get("include", []):
        if "system" in inc:
            systems.add(inc["system"])
        for nested in inc.get("valueSet", []):
            systems |= valueset_systems(by_url, strip_version(nested), seen | {url})
    return systems


# Types whose values a required binding constrains: a code, a Coding, a CodeableConcept (one
# of its codings) and a Quantity (its code); a string or uri only when it is the element's
# only type.
BINDABLE = ("code", "Coding", "CodeableConcept", "Quantity")
BINDABLE_SINGLE = ("string", "uri")


def cardinality_max(value):
    return float("inf") if value == "*" else int(value)


class ProfileCompiler:
    """Turns the snapshot of one resource profile into a tree of the elements it constrains
    beyond the base resource (and its data types)."""

    def __init__(self, sd, core, notes):
        self.sd = sd
        self.core = core
        self.notes = notes
        self.value_sets = set()
        elements = sd["snapshot"]["element"]
        self.by_id = {el["id"]: el for el in elements}
        self.children = {}
        self.slices = {}
        for el in elements[1:]:
            parent, last = el["id"].rsplit(".", 1)
            if parent not in self.by_id:
                raise SystemExit(f"{sd['url']}: {el['id']} has no parent in the snapshot")
            if ":" in last:
                name, slice_name = last.split(":", 1)
                if "/" in slice_name:
                    self.note(f"{el['id']}: a reslice, not enforced")
                    continue
                self.slices.setdefault(f"{parent}.{name}", []).append(el["id"])
            else:
                self.children.setdefault(parent, []).append(el["id"])

    def note(self, text):
        self.notes.append(f"{self.sd['id']}: {text}")

    def compile(self):
        root = self.sd["snapshot"]["element"][0]["id"]
        elements = [n for n in (self.node(c, False) for c in self.children.get(root, [])) if n]
        for sliced, slice_ids in self.slices.items():
            if sliced not in self.by_id:
                self.note(f"{', '.join(slice_ids)}: slices of an element missing from the snapshot, not enforced")
        return elements

    def node(self, element_id, is_slice):
        el = self.by_id[element_id]
        base = self.core.get(el["base"]["path"], {})
        name = el["path"].rsplit(".", 1)[-1]
        node = {"name": name[:-3] if name.endswith("[x]") else name}
        if name.endswith("[x]"):
            node["choice"] = True
        if is_slice:
            node["sliceName"] = el["sliceName"]
        shape = len(node)

        tighter = el["min"] > el["base"]["min"] or cardinality_max(el["max"]) < cardinality_max(el["base"]["max"])
        if is_slice or tighter:
            node["min"] = el["min"]
            node["max"] = el["max"]
        types = [t["code"] for t in el.get("type", [])]
        if name.endswith("[x]") and set(types) < {t["code"] for t in base.get("type", [])}:
            node["types"] = types
        for key, value in el.items():
            if key.startswith("fixed"):
                node["fixed"] = value
            elif key.startswith("pattern"):
                node["pattern"] = value
        binding = self.binding(el, base, types)
        if binding:
            node["binding"] = binding
        children = [n for n in (self.node(c, False) for c in self.children.get(element_id, [])) if n]
        if children:
            node["children"] = children
        slicing = self.slicing(el, element_id)
        if slicing:
            node["slicing"] = slicing
        return node if is_slice or len(node) > shape else None

    def binding(self, el, base, types):
        binding = el.get("binding", {})
        if binding.get("strength") != "required" or not binding.get("valueSet"):
            return None
        url = strip_version(binding["valueSet"])
        base_binding = base.get("binding", {})
        if base_binding.get("strength") == "required" and strip_version(base_binding.get("valueSet")) == url:
            return None  # the base definition's binding, checked with the structure
        bindable = [t for t in types if t in BINDABLE]
        if len(types) == 1:
            bindable += [t for t in types if t in BINDABLE_SINGLE]
        if not bindable:
            return None
        self.value_sets.add(url)
        return {"valueSet": url, "types": bindable}

    def slicing(self, el, element_id):
        slice_ids = self.slices.get(element_id, [])
        if not slice_ids:
            return None
        if "slicing" not in el:
            self.note(f"{element_id}: slices without a slicing, not enforced")
            return None
        discriminators = el["slicing"].get("discriminator", [])
        slices = []
        for slice_id in slice_ids:
            conditions = [self.condition(slice_id, d) for d in discriminators]
            if not conditions or None in conditions:
                self.note(f"{element_id}: discriminator {discriminators} not supported, slices not enforced")
                return None
            node = self.node(slice_id, True)
            node["match"] = conditions
            slices.append(node)
        return {
            "rules": el["slicing"].get("rules", "open"),
            "ordered": el["slicing"].get("ordered", False),
            "slices": slices,
        }

    def condition(self, slice_id, discriminator):
        kind, path = discriminator["type"], discriminator["path"]
        if "(" in path or kind == "profile":
            return None
        segments = [] if path == "$this" else path.split(".")
        if kind == "type":
            if path != "$this":
                return None
            el = self.at(slice_id, segments, lambda el: el.get("type"))
            return el and {"path": path, "type": [t["code"] for t in el["type"]]}
        if kind == "exists":
            el = self.at(slice_id, segments, lambda el: True)
            return el and {"path": path, "exists": el["max"] != "0" and el["min"] > 0}
        el = self.at(slice_id, segments, lambda el: any(k.startswith(("fixed", "pattern")) for k in el))
        if el:
            for key, value in el.items():
                if key.startswith("fixed"):
                    return {"path": path, "fixed": value}
                if key.startswith("pattern"):
                    return {"path": path, "pattern": value}
        if path == "url":  # an extension slice: its url is the canonical of its definition
            profiles = [p for t in self.by_id[slice_id].get("type", []) for p in t.get("profile", [])]
            if len(profiles) == 1:
                return {"path": path, "fixed": profiles[0]}
        return None

    def at(self, element_id, segments, wanted):
        """The element at a discriminator path below a slice that has what is wanted, looking
        also into the required slices of sliced elements on the way."""
        if not segments:
            el = self.by_id.get(element_id)
            return el if el and wanted(el) else None
        next_id = f"{element_id}.{segments[0]}"
        candidates = [next_id] + [s for s in self.slices.get(next_id, []) if self.by_id[s]["min"] > 0]
        for candidate in candidates:
            if candidate in self.by_id:
                found = self.at(candidate, segments[1:], wanted)
                if found:
                    return found
        return None


def profiles(pkg):
    """The resource profiles of the package, compiled; the value sets their bindings need;
    and notes on what is not enforced."""
    core = {}
    for sd in bundle_resources(pkg, "Bundle-types.json") + bundle_resources(pkg, "Bundle-resources.json"):
        if sd["resourceType"] == "StructureDefinition" and sd.get("derivation") != "constraint":
            for el in sd["snapshot"]["element"]:
                core[el["path"]] = el
    out, value_sets, notes = {}, set(), []
    for sd in bundle_resources(pkg, "Bundle-profiles-others.json"):
        if sd.get("derivation") != "constraint" or sd["kind"] != "resource":
            continue
        compiler = ProfileCompiler(sd, core, notes)
        out[sd["url"]] = {
            "name": sd["name"],
            "version": sd["version"],
            "type": sd["type"],
            "base": sd["baseDefinition"],
            "elements": compiler.compile(),
        }
        value_sets |= compiler.value_sets
    return out, value_sets, notes


def finish_bindings(profiles_out, expanded, by_url, notes):
    """Keeps the bindings whose value set could be enumerated and names its code system when
    there is one; drops (and notes) the others."""

    def walk(nodes, profile):
        for node in nodes:
            binding = node.get("binding")
            if binding:
                if binding["valueSet"] not in expanded:
                    notes.append(f"{profile}: {binding['valueSet']} cannot be enumerated, binding not enforced")
                    del node["binding"]
                else:
                    systems = valueset_systems(by_url, binding["valueSet"])
                    if len(systems) == 1:
                        binding["system"] = systems.pop()
            walk(node.get("children", []), profile)
            walk(node.get("slicing", {}).get("slices", []), profile)

    for url, profile in profiles_out.items():
        walk(profile["elements"], url.rsplit("/", 1)[-1])


def concept_parents(cs):
    """code -> set of parent codes (is-a), from concept nesting and the `child`, `parent`
    and `subsumedBy` properties; every code of the system is a key."""
    parents = {}

    def walk(concepts, parent):
        for c in concepts:
            mine = parents.setdefault(c["code"], set())
            if parent is not None:
                mine.add(parent)
            for prop in c.get("property", []):
                value = prop.get("valueCode")
                if value is None:
                    continue
                if prop["code"] == "child":
                    parents.setdefault(value, set()).add(c["code"])
                elif prop["code"] in ("parent", "subsumedBy"):
                    mine.add(value)
            walk(c.get("concept", []), c["code"])

    walk(cs.get("concept", []), None)
    return parents


def concept_properties(cs):
    """code -> {property code: set of values as text}."""
    out = {}

    def walk(concepts):
        for c in concepts:
            props = out.setdefault(c["code"], {})
            for prop in c.get("property", []):
                for key, value in prop.items():
                    if key.startswith("value"):
                        props.setdefault(prop["code"], set()).add(str(value).lower() if isinstance(value, bool) else str(value))
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    return out


def terminology(by_url):
    """Every complete CodeSystem of the package (its is-a hierarchy) and every ValueSet that
    can be expanded from the package alone, for the token modifiers :in, :not-in, :above
    and :below.

    A ValueSet expands when each include and exclude is a list of concepts, a whole
    CodeSystem of the package whose content is complete, a filter on such a system
    (`concept` is-a / descendent-of / is-not-a, or `property = value`), or another value
    set that expands; includes that name several sources are intersected, as compose
    requires. Otherwise the package's own `expansion`, if it has one, is used.
    """
    systems = {url: cs for (kind, url), cs in by_url.items() if kind == "CodeSystem" and cs.get("content") == "complete"}
    parents = {url: concept_parents(cs) for url, cs in systems.items()}
    children = {}
    for url, table in parents.items():
        down = children.setdefault(url, {})
        for code, ups in table.items():
            for up in ups:
                down.setdefault(up, set()).add(code)

    def descendants(system, code):
        found, stack = set(), [code]
        while stack:
            for child in children[system].get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        found.discard(code)
        return found

    def filtered(system, f):
        table = parents.get(system)
        if table is None:
            return None
        prop, op, value = f.get("property"), f.get("op"), f.get("value")
        if prop == "concept" and op == "is-a":
            return ({value} | descendants(system, value)) if value in table else set()
        if prop == "concept" and op == "descendent-of":
            return descendants(system, value) if value in table else set()
        if prop == "concept" and op == "is-not-a":
            return set(table) - {value} - descendants(system, value)
        if op == "=":
            props = concept_properties(systems[system])
            return {code for code, p in props.items() if value in p.get(prop, ())}
        return None

    def source(inc, seen):
        """The (system, code) pairs one include or exclude selects, or None."""
        sets = []
        system = inc.get("system")
        if system is not None:
            if "concept" in inc:
                sets.append({(system, c["code"]) for c in inc["concept"]})
            elif inc.get("filter"):
                codes = None
                for f in inc["filter"]:
                    selected = filtered(system, f)
                    if selected is None:
                        return None
                    codes = selected if codes is None else codes & selected
                sets.append({(system, c) for c in codes})
            elif system in parents:
                sets.append({(system, c) for c in parents[system]})
            else:
                return None
        for nested in inc.get("valueSet", []):
            sub = expand(strip_version(nested), seen)
            if sub is None:
                return None
            sets.append(sub)
        if not sets:
            return None
        result = sets[0]
        for other in sets[1:]:
            result = result & other
        return result

    cache = {}

    def expand(url, seen):
        if url in cache:
            return cache[url]
        if url in seen:
            return None
        vs = by_url.get(("ValueSet", url))
        if vs is None:
            return None
        seen = seen | {url}
        result = set()
        compose = vs.get("compose", {})
        for inc in compose.get("include", []):
            selected = source(inc, seen)
            if selected is None:
                result = None
                break
            result |= selected
        if result is not None:
            for exc in compose.get("exclude", []):
                selected = source(exc, seen)
                if selected is None:
                    result = None
                    break
                result -= selected
        if result is None and vs.get("expansion"):
            result = set()
            stack = list(vs["expansion"].get("contains", []))
            while stack:
                c = stack.pop()
                if c.get("system") and c.get("code"):
                    result.add((c["system"], c["code"]))
                stack.extend(c.get("contains", []))
        cache[url] = result or None
        return cache[url]

    value_sets = {}
    for kind, url in sorted(by_url):
        if kind != "ValueSet" or not url:
            continue
        pairs = expand(url, frozenset())
        if pairs:
            by_system = {}
            for system, code in pairs:
                by_system.setdefault(system, []).append(code)
            value_sets[url] = {system: sorted(codes) for system, codes in by_system.items()}
    code_systems = {
        url: {code: sorted(ups) for code, ups in table.items() if ups}
        for url, table in parents.items()
    }
    return {"codeSystems": code_systems, "valueSets": value_sets}


def split_expression(expr):
    """Split a FHIRPath union at top level (outside parentheses and quotes)."""
    parts, depth, quote, cur = [], 0, False, ""
    for ch in expr:
        if ch == "'" and not quote:
            quote = True
        elif ch == "'" and quote:
            quote = False
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == "|" and depth == 0 and not quote:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def branch_base(branch):
    b = branch.lstrip("(").strip()
    return b.split(".", 1)[0].split(" ", 1)[0]


def search_parameters(pkg, type_names):
    sps = [r for r in bundle_resources(pkg, "Bundle-searchParams.json") if r["resourceType"] == "SearchParameter"]
    by_url = {sp["url"]: sp for sp in sps}
    out = []
    for sp in sps:
        for base in sp["base"]:
            entry = {"code": sp["code"], "base": base, "type": sp["type"], "url": sp["url"]}
            expr = sp.get("expression")
            if expr:
                branches = split_expression(expr)
                if len(sp["base"]) > 1 or any(branch_base(b) != base for b in branches):
                    branches = [b for b in branches if branch_base(b) == base]
                if not branches:
                    continue
                entry["expression"] = " | ".join(branches)
            if sp.get("target"):
                entry["target"] = sorted(sp["target"])
            if sp.get("modifier"):
                entry["modifier"] = sp["modifier"]
            if sp.get("comparator"):
                entry["comparator"] = sp["comparator"]
            if sp.get("component"):
                comps = []
                for c in sp["component"]:
                    target = by_url.get(c["definition"])
                    if target is None:
                        break
                    comps.append({"code": target["code"], "type": target["type"], "expression": c["expression"]})
                else:
                    entry["component"] = comps
                if "component" not in entry:
                    continue
            out.append(entry)
    out.sort(key=lambda e: (e["base"], e["code"]))
    return out


def compartment(pkg):
    cd = load(pkg, "CompartmentDefinition-patient.json")
    return {r["code"]: r.get("param", []) for r in sorted(cd["resource"], key=lambda r: r["code"]) if r.get("param")}


def write(name, data):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=None, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


def main(argv):
    pkg = package_dir(argv)
    os.makedirs(OUT, exist_ok=True)
    types = structure(pkg)
    required = {e["requiredBinding"] for t in types.values() for e in t["elements"] if "requiredBinding" in e}
    profiles_out, profile_value_sets, notes = profiles(pkg)
    by_url = terminology_resources(pkg)
    expanded = valuesets(by_url, required | profile_value_sets)
    finish_bindings(profiles_out, expanded, by_url, notes)
    write("structure.json", types)
    write("valuesets.json", expanded)
    write("profiles.json", profiles_out)
    write("terminology.json", terminology(by_url))
    write("search-parameters.json", search_parameters(pkg, set(types)))
    write("compartment-patient.json", compartment(pkg))
    for note in notes:
        print(f"not enforced: {note}")


if __name__ == "__main__":
    main(sys.argv)
