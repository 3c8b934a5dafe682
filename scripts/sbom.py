#!/usr/bin/python3
"""Writes the software bill of materials of an inferbox package (CONVENTIONS R6.14): a
CycloneDX 1.5 JSON document listing what the package's programs run, so that a scanner can
match it against CVE databases without unpacking anything.

- The operating system the packages were built on (/etc/os-release), as scanners need it to
  pick the distribution's advisories.
- Every shared library the programs load (ldd: the whole closure, transitive included), as
  the Debian package that ships it, with its exact version and a package URL
  (pkg:deb/debian/<name>@<version>?arch=<arch>&distro=debian-12, percent-encoded as the purl
  spec says: libgrpc%2B%2B1.51@1.51.1-3%2Bb1). A library no package owns is listed by its
  file name with the property inferbox:unpackaged.
- Code compiled into the programs from headers or static libraries (--compiled-in: Debian -dev
  packages such as Boost's Asio/Beast or CLI11; --generic NAME@VERSION for what comes from
  elsewhere, such as NVIDIA's static CUDA runtime).

Libraries the engine opens at run time only when a model is on a GPU (cuBLASLt, NCCL) are not
in the package and not listed; docs/install.md names them.

Usage: sbom.py --out FILE --package NAME --version VERSION --commit COMMIT
               --binary PATH [--binary PATH ...] [--compiled-in DEBPKG ...]
               [--generic NAME@VERSION ...] [--timestamp UNIX_SECONDS]
A compiled-in package that is not installed is left out with a warning. The same inputs give
the same document: --timestamp dates it (the build passes its configure time, which honours
SOURCE_DATE_EPOCH), and its serial number derives from everything it lists.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import urllib.parse
import uuid


def fail(message):
    print(f"sbom: {message}", file=sys.stderr)
    sys.exit(1)


def shared_libraries(binary):
    """Paths of the shared libraries `binary` loads (ldd's resolved paths)."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"ldd {binary} failed: {result.stderr.strip()}")
    paths = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if "=>" in fields:
            target = fields[fields.index("=>") + 1]
            if target == "not":
                fail(f"{binary} needs {fields[0]}, which is not found")
            paths.append(target)
        elif fields and fields[0].startswith("/"):
            paths.append(fields[0])  # The dynamic loader itself.
    return paths


def purl_part(text):
    """Percent-encoding of a purl name or version ('+' is %2B; ':' and '~' stay)."""
    return urllib.parse.quote(text, safe=".-_~:")


def os_release(path="/etc/os-release"):
    """(id, version_id) of the build host's distribution, e.g. ("debian", "12")."""
    fields = {}
    try:
        with open(path) as release:
            for line in release:
                key, _, value = line.strip().partition("=")
                fields[key] = value.strip('"')
    except OSError:
        pass
    return fields.get("ID", "debian"), fields.get("VERSION_ID", "")


def owners(paths):
    """Maps each path to the Debian package owning it, arch-qualified as dpkg names it on a
    multi-arch host ("libc6:amd64"; None when no package does). Tries the path
    as given, resolved, and with /usr added or dropped (merged-/usr systems record either)."""
    candidates = {}
    for path in paths:
        real = os.path.realpath(path)
        options = [path, real]
        for option in (path, real):
            if option.startswith("/usr/"):
                options.append(option[4:])
            else:
                options.append("/usr" + option)
        candidates[path] = list(dict.fromkeys(options))
    queries = sorted({option for options in candidates.values() for option in options})
    result = subprocess.run(["dpkg-query", "-S"] + queries, capture_output=True, text=True)
    owner_of = {}
    for line in result.stdout.splitlines():
        package, _, owned = line.partition(": ")
        if "," in package or package.startswith("diversion by"):
            continue
        owner_of[owned.strip()] = package
    return {path: next((owner_of[o] for o in options if o in owner_of), None)
            for path, options in candidates.items()}


def package_versions(packages):
    """{package as given: (name, version, architecture)} from dpkg, for installed packages.
    An arch-qualified name ("libc6:amd64") picks that architecture's copy."""
    versions = {}
    for package in sorted(packages):
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n",
             package], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            status, name, version, architecture = line.split("\t")
            if status == "installed":
                versions[package] = (name, version, architecture)
                break
    return versions


def deb_component(name, version, architecture, distro, scope_note):
    os_id, os_version = distro
    qualifiers = f"arch={architecture}" + (f"&distro={os_id}-{os_version}" if os_version else "")
    purl = f"pkg:deb/{os_id}/{purl_part(name)}@{purl_part(version)}?{qualifiers}"
    return {
        "type": "library",
        "bom-ref": purl,
        "name": name,
        "version": version,
        "purl": purl,
        "properties": [{"name": "inferbox:how", "value": scope_note}],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--package", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--binary", action="append", required=True)
    parser.add_argument("--compiled-in", action="append", default=[])
    parser.add_argument("--generic", action="append", default=[])
    parser.add_argument("--timestamp", type=int)
    args = parser.parse_args()
    distro = os_release()

    libraries = {}
    for binary in args.binary:
        if not os.path.isfile(binary):
            fail(f"no such program: {binary}")
        for path in shared_libraries(binary):
            libraries.setdefault(path, set()).add(os.path.basename(binary))
    owner = owners(list(libraries))
    packaged = {package for package in owner.values() if package}
    versions = package_versions(packaged | set(args.compiled_in))
    missing = packaged - set(versions)
    if missing:
        fail(f"owned by packages dpkg does not list as installed: {', '.join(sorted(missing))}")

    components = {}
    for path, package in sorted(owner.items()):
        if package is None:
            components[f"file:{path}"] = {
                "type": "library", "bom-ref": f"file:{path}", "name": os.path.basename(path),
                "properties": [{"name": "inferbox:unpackaged", "value": path}]}
            continue
        name, version, architecture = versions[package]
        components.setdefault(f"deb:{name}:{architecture}", deb_component(
            name, version, architecture, distro, "shared library"))
    for package in args.compiled_in:
        if package not in versions:
            print(f"sbom: warning: {package} is not installed; it is not listed", file=sys.stderr)
            continue
        name, version, architecture = versions[package]
        components.setdefault(f"deb:{name}:{architecture}", deb_component(
            name, version, architecture, distro, "compiled in (headers or static)"))
    for entry in args.generic:
        name, _, version = entry.partition("@")
        if not name or not version:
            fail(f"--generic needs NAME@VERSION, got {entry!r}")
        purl = f"pkg:generic/{name}@{version}"
        components[purl] = {"type": "library", "bom-ref": purl, "name": name,
                            "version": version, "purl": purl,
                            "properties": [{"name": "inferbox:how",
                                            "value": "compiled in (headers or static)"}]}

    os_id, os_version = distro
    os_ref = f"os:{os_id}-{os_version}"
    components[os_ref] = {"type": "operating-system", "bom-ref": os_ref, "name": os_id,
                          "version": os_version}
    epoch = args.timestamp if args.timestamp is not None else int(
        os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    timestamp = (datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch
                 else datetime.datetime.now(datetime.timezone.utc))
    application = f"pkg:generic/{args.package}@{purl_part(args.version)}"
    ordered = [components[key] for key in sorted(components)]
    listed = json.dumps(ordered, sort_keys=True)
    document = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(
            uuid.NAMESPACE_URL,
            f"inferbox/{args.package}/{args.version}/{args.commit}/{listed}")),
        "version": 1,
        "metadata": {
            "timestamp": timestamp.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "component": {
                "type": "application", "bom-ref": application, "name": args.package,
                "version": args.version, "purl": application,
                "properties": [{"name": "inferbox:commit", "value": args.commit},
                               {"name": "inferbox:programs",
                                "value": " ".join(os.path.basename(b) for b in args.binary)}],
            },
        },
        "components": ordered,
        "dependencies": [{"ref": application,
                          "dependsOn": [component["bom-ref"] for component in ordered]}],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    temporary = args.out + ".tmp"
    with open(temporary, "w") as out:
        json.dump(document, out, indent=1, sort_keys=False)
        out.write("\n")
    os.replace(temporary, args.out)
    print(f"sbom: {args.out}: {args.package} {args.version}, {len(ordered)} components")


if __name__ == "__main__":
    main()
