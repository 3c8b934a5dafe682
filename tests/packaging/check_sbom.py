#!/usr/bin/python3
"""Checks a package's SBOM (CONVENTIONS R6.14), read from stdin: a CycloneDX document naming
PACKAGE at VERSION, listing each NAME=VERSION given as a Debian package of exactly that version
with its package URL, and giving every component a package URL (or marking it unpackaged).

Usage: check_sbom.py PACKAGE VERSION NAME=VERSION... < sbom.cdx.json
"""
import json
import sys
import urllib.parse


def quote(text):
    """As the purl spec percent-encodes names and versions ('+' is %2B)."""
    return urllib.parse.quote(text, safe=".-_~:")


def main():
    package, version, expected = sys.argv[1], sys.argv[2], sys.argv[3:]
    bom = json.load(sys.stdin)
    problems = []
    if bom.get("bomFormat") != "CycloneDX" or not str(bom.get("specVersion", "")).startswith("1."):
        problems.append("not a CycloneDX 1.x document")
    top = bom.get("metadata", {}).get("component", {})
    if top.get("name") != package or top.get("version") != version:
        problems.append(f"describes {top.get('name')} {top.get('version')}, not {package} {version}")
    components = {component.get("name"): component for component in bom.get("components", [])}
    for entry in expected:
        name, _, wanted = entry.partition("=")
        found = components.get(name)
        if found is None:
            problems.append(f"lacks {name}")
        elif (found.get("version") != wanted or not found.get("purl", "").startswith(
                f"pkg:deb/debian/{quote(name)}@{quote(wanted)}?")):
            problems.append(f"{name}: version {found.get('version')}, purl {found.get('purl')}; "
                            f"installed: {wanted}")
    systems = [c for c in bom.get("components", []) if c.get("type") == "operating-system"]
    if len(systems) != 1 or not systems[0].get("version"):
        problems.append("does not name the operating system it was built on")
    for component in bom.get("components", []):
        if component.get("type") == "operating-system":
            continue
        unpackaged = any(p.get("name") == "inferbox:unpackaged"
                         for p in component.get("properties", []))
        if "purl" not in component and not unpackaged:
            problems.append(f"{component.get('name')} has no package URL")
    for problem in problems:
        print(f"check_packages: SBOM of {package}: {problem}", file=sys.stderr)
    print(f"check_packages: SBOM of {package}: {len(components)} components"
          + ("" if problems else ", as installed"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
