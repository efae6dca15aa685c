"""Build the Lambda layers and function zips from template.yaml, without Docker.

    python scripts/package.py [--out build] [--arch arm64|x86_64] [--keep-runtime-packages]
    python scripts/package.py --sam-layer SharedLayer --artifacts DIR   (sam build's step)

Driven by the template: every ``AWS::Serverless::LayerVersion`` with a ``ContentUri``
directory is built the way ``sam build`` builds it (``requirements.txt`` installed, the
directory's Python packages copied in, everything under ``python/``), and every
``AWS::Serverless::Function`` gets the layers it lists plus those of ``Globals``.

Differences from ``sam build``, all to make what ships smaller and faster to start:

- Dependencies come from platform wheels (``pip install --platform manylinux2014_<arch>
  --only-binary=:all: --python-version <runtime>``), so no Docker and no compiler.
- Distributions the Lambda Python runtime already provides (boto3 and its dependencies,
  see RUNTIME_PROVIDED) are left out unless ``--keep-runtime-packages``.
- A distribution that a later layer would ship again, identical, is left out of it when
  every function using that layer also has the earlier one.
- Bytecode is compiled for the runtime's Python (``unchecked-hash`` .pyc files, which do
  not depend on file times that zips round to 2 s): /opt is read-only in Lambda, so
  without them every cold start compiles every module it imports.

Prints, per function, the unzipped size of its code plus its layers, and per layer
its size. Standard library only (plus pip, run as a subprocess).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

#: Distributions in the Lambda Python runtime (boto3 and what it pulls in). Functions
#: import these from the runtime, as the README says; shipping them again only adds MB.
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six"}
)

PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}

#: Never shipped from a layer's source directory (the Makefile is sam build's recipe).
SKIP_NAMES = {"__pycache__", "requirements.txt", "Makefile"}
SKIP_SUFFIXES = (".egg-info", ".pyc", ".pyo", ".dist-info")


# ---------------------------------------------------------------- template (YAML subset)


class TemplateError(ValueError):
    pass


@dataclass
class _Line:
    indent: int
    text: str
    number: int


def _strip_comment(text: str) -> str:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (i == 0 or text[i - 1] in " [{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _split_flow(text: str) -> list[str]:
    items, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        items.append(current.strip())
    return items


def _key_split(text: str) -> tuple[str, str] | None:
    """``key: value`` -> (key, value); None when the text is not a mapping entry."""
    if text[:1] in "'\"":
        end = text.find(text[0], 1)
        if end > 0 and text[end + 1 : end + 2] == ":" and text[end + 2 : end + 3] in ("", " "):
            return text[1:end], text[end + 2 :].strip()
        return None
    if text[:1] in "[{!":
        return None
    match = re.search(r":( |$)", text)
    if not match:
        return None
    return text[: match.start()], text[match.end() :].strip()


BLOCK_STYLES = (">", ">-", ">+", "|", "|-", "|+")


def _tagged(tag: str, value: Any) -> Any:
    """CloudFormation short form (``!Ref x``) -> long form (``{"Ref": x}``)."""
    if tag in ("Ref", "Condition"):
        return {tag: value}
    if tag == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag}": value}


def _scalar(text: str) -> Any:
    if text.startswith("!"):
        tag, _, rest = text[1:].partition(" ")
        return _tagged(tag, _scalar(rest.strip()))
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(item) for item in _split_flow(text[1:-1])]
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for item in _split_flow(text[1:-1]):
            split = _key_split(item)
            if split is None:
                raise TemplateError(f"cannot read flow mapping item {item!r}")
            out[split[0]] = _scalar(split[1])
        return out
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return text


class _Reader:
    """Reads the block-style YAML CloudFormation templates are written in.

    Enough for template.yaml (block mappings and sequences, flow sequences that may span
    lines, quoted and tagged scalars, ``>``/``|`` block scalars); a test checks it reads
    the template exactly as PyYAML with CloudFormation tags does.
    """

    def __init__(self, source: str) -> None:
        self.raw = source.splitlines()
        self.pos = 0

    def _peek(self) -> _Line | None:
        while self.pos < len(self.raw):
            raw = self.raw[self.pos]
            text = _strip_comment(raw)
            if text.strip() and text.strip() != "---":
                return _Line(len(text) - len(text.lstrip(" ")), text.strip(), self.pos + 1)
            self.pos += 1
        return None

    def _continue_flow(self, text: str) -> str:
        """Joins the lines of a flow collection that spans several lines."""
        while text.count("[") + text.count("{") > text.count("]") + text.count("}"):
            self.pos += 1
            if self.pos >= len(self.raw):
                raise TemplateError("unterminated flow collection")
            text += " " + _strip_comment(self.raw[self.pos]).strip()
        return text

    def _block_scalar(self, style: str, parent_indent: int) -> str:
        lines: list[str] = []
        indent = None
        while self.pos + 1 < len(self.raw):
            raw = self.raw[self.pos + 1]
            if raw.strip():
                this = len(raw) - len(raw.lstrip(" "))
                if this <= parent_indent:
                    break
                indent = this if indent is None else indent
                lines.append(raw[indent:])
            else:
                lines.append("")
            self.pos += 1
        while lines and not lines[-1]:
            lines.pop()
        if style.startswith(">"):
            text = ""
            for line in lines:
                if not line:
                    text += "\n"
                elif text and not text.endswith("\n"):
                    text += " " + line
                else:
                    text += line
        else:
            text = "\n".join(lines)
        return text if style.endswith("-") else text + "\n"

    def _value(self, text: str, indent: int) -> Any:
        """The value after ``key:`` or ``- `` on the current line (pos is on it)."""
        if text.startswith("!") and (
            " " not in text or text.partition(" ")[2].strip() in BLOCK_STYLES
        ):  # a tag on a block scalar or on a nested block node
            tag, _, rest = text[1:].partition(" ")
            return _tagged(tag, self._value(rest.strip(), indent))
        if text in BLOCK_STYLES:
            value = self._block_scalar(text, indent)
            self.pos += 1
            return value
        if text:
            text = self._continue_flow(text)
            self.pos += 1
            return _scalar(text)
        self.pos += 1
        nxt = self._peek()
        if nxt is None or nxt.indent < indent or (
            nxt.indent == indent and not nxt.text.startswith("- ") and nxt.text != "-"
        ):
            return None
        return self.node(nxt.indent)

    def node(self, indent: int) -> Any:
        first = self._peek()
        if first is None:
            return None
        if first.text.startswith("- ") or first.text == "-":
            return self._sequence(indent)
        return self._mapping(indent)

    def _mapping(self, indent: int, first_text: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            if first_text is not None:
                text, first_text = first_text, None
            else:
                line = self._peek()
                if line is None or line.indent < indent:
                    return out
                if line.indent > indent:
                    raise TemplateError(f"line {line.number}: unexpected indentation")
                if line.text.startswith("- "):
                    return out
                text = line.text
            split = _key_split(text)
            if split is None:
                raise TemplateError(f"line {self.pos + 1}: expected 'key: value': {text!r}")
            key, rest = split
            out[key] = self._value(rest, indent)

    def _sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while True:
            line = self._peek()
            if line is None or line.indent != indent or not (
                line.text.startswith("- ") or line.text == "-"
            ):
                return out
            rest = line.text[1:].strip()
            item_indent = indent + len(line.text) - len(line.text[1:].lstrip()) if rest else indent
            if rest and _key_split(rest) is not None:  # "- key: value": a mapping item
                out.append(self._mapping(item_indent, first_text=rest))
            else:
                out.append(self._value(rest, indent))


def load_template(path: Path) -> dict[str, Any]:
    data = _Reader(path.read_text(encoding="utf-8")).node(0)
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: not a CloudFormation template")
    return data


# ---------------------------------------------------------------------------- model


@dataclass
class Layer:
    name: str
    content: Path
    runtime: str
    arch: str

    @property
    def requirements(self) -> Path:
        return self.content / "requirements.txt"


@dataclass
class Function:
    name: str
    code: Path
    runtime: str
    arch: str
    layers: list[str] = field(default_factory=list)


def _ref(value: Any) -> str | None:
    if isinstance(value, dict) and set(value) == {"Ref"} and isinstance(value["Ref"], str):
        return value["Ref"]
    return None


def read_stack(template: Path) -> tuple[dict[str, Layer], dict[str, Function]]:
    """The layers this repository builds and the functions, with their layers in order."""
    data = load_template(template)
    base = template.parent
    glob = (data.get("Globals") or {}).get("Function") or {}
    resources = data.get("Resources") or {}
    layers: dict[str, Layer] = {}
    functions: dict[str, Function] = {}
    for name, res in resources.items():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::Serverless::LayerVersion":
            content = props.get("ContentUri")
            if not isinstance(content, str):
                continue  # a layer from S3 or elsewhere: not ours to build
            meta = res.get("Metadata") or {}
            method = meta.get("BuildMethod")
            runtime = str((props.get("CompatibleRuntimes") or [""])[0]
                          if not method or method == "makefile" else method)
            arch = str(meta.get("BuildArchitecture")
                       or (props.get("CompatibleArchitectures") or ["x86_64"])[0])
            layers[name] = Layer(name, (base / content).resolve(), runtime, arch)
    for name, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.get("Properties") or {}
        # SAM Globals: lists are additive, global entries first.
        refs = [_ref(v) for v in [*(glob.get("Layers") or []), *(props.get("Layers") or [])]]
        unknown = [r for r in refs if r is None]
        if unknown:
            raise TemplateError(f"{name}: only !Ref layers of this template are supported")
        missing = [r for r in refs if r not in layers]
        if missing:
            raise TemplateError(f"{name}: layers not built from this template: {missing}")
        archs = props.get("Architectures") or glob.get("Architectures") or ["x86_64"]
        functions[name] = Function(
            name=name,
            code=(base / str(props["CodeUri"])).resolve(),
            runtime=str(props.get("Runtime") or glob.get("Runtime")),
            arch=str(archs[0]),
            layers=[r for r in refs if r is not None],
        )
    return layers, functions


# ---------------------------------------------------------------------------- build


def python_version(runtime: str) -> str:
    match = re.fullmatch(r"python(\d)\.(\d+)", runtime)
    if not match:
        raise TemplateError(f"not a Python runtime: {runtime!r}")
    return f"{match[1]}.{match[2]}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(site: Path) -> dict[str, tuple[str, Path]]:
    """Installed distributions in ``site``: canonical name -> (version, dist-info dir)."""
    found = {}
    for info in site.glob("*.dist-info"):
        meta: dict[str, str] = {}
        for line in (info / "METADATA").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line:
                break
            key, _, value = line.partition(": ")
            meta.setdefault(key, value)
        found[canonical(meta["Name"])] = (meta["Version"], info)
    return found


def remove_distribution(site: Path, info: Path) -> None:
    """Deletes exactly the files a distribution's RECORD lists, then empty directories."""
    dirs: set[Path] = set()
    for row in (info / "RECORD").read_text(encoding="utf-8").splitlines():
        rel = row.split(",", 1)[0]
        if not rel:
            continue
        path = (site / rel).resolve()
        if site.resolve() not in path.parents:
            continue  # e.g. ../../bin/ scripts pip put elsewhere
        path.unlink(missing_ok=True)
        dirs.update(p for p in path.parents if site.resolve() in p.parents)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        pycache = d / "__pycache__"
        if pycache.is_dir() and not any(p.suffix != ".pyc" for p in pycache.iterdir()):
            shutil.rmtree(pycache)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    shutil.rmtree(info, ignore_errors=True)


def pip_install(requirements: Path, target: Path, runtime: str, arch: str,
                platform: str | None = None) -> None:
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-warn-conflicts", "--no-compile", "--only-binary=:all:",
        "--implementation", "cp", "--python-version", python_version(runtime),
        "--platform", platform or PLATFORMS[arch],
        "--target", str(target), "--upgrade", "-r", str(requirements),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"pip failed for {requirements} ({platform or PLATFORMS[arch]})")


def copy_source(src: Path, dest: Path) -> None:
    """The layer directory's own code (what sam build copies), minus caches and metadata."""
    for entry in sorted(src.iterdir()):
        if entry.name in SKIP_NAMES or entry.name.endswith(SKIP_SUFFIXES):
            continue
        if entry.is_dir():
            shutil.copytree(
                entry, dest / entry.name, dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        else:
            shutil.copy2(entry, dest / entry.name)


def find_python(runtime: str) -> str | None:
    """An interpreter of the runtime's version, to compile bytecode Lambda will accept."""
    version = python_version(runtime)
    candidates = [os.environ.get("LAMBDA_PYTHON", ""), f"python{version}",
                  *sorted(Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))]
    for candidate in candidates:
        exe = shutil.which(str(candidate)) if candidate else None
        if not exe:
            continue
        check = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if check.returncode == 0 and check.stdout.strip() == version:
            return exe
    return None


def compile_bytecode(python: str, tree: Path) -> None:
    subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         str(tree)],
        check=True, stdout=subprocess.DEVNULL,
    )


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_zip(tree: Path, out: Path) -> int:
    out.unlink(missing_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tree))
    return out.stat().st_size


@dataclass
class Built:
    layer_dirs: dict[str, Path]
    layer_sizes: dict[str, tuple[int, int]]  # unzipped, zipped
    layer_dists: dict[str, dict[str, str]]  # canonical name -> version


def build_layers(layers: dict[str, Layer], functions: dict[str, Function], out: Path, *,
                 arch: str | None = None, keep_runtime: bool = False, zips: bool = True,
                 pyc: bool = True, log: Any = print) -> Built:
    """Builds every layer into ``out/layers/<Name>/python``; returns sizes and contents."""
    built = Built({}, {}, {})
    python = None
    if pyc:
        runtimes = {layer.runtime for layer in layers.values()}
        python = find_python(next(iter(runtimes))) if len(runtimes) == 1 else None
        if python is None:
            log(f"note: no interpreter for {sorted(runtimes)} found: layers ship without .pyc "
                "(set LAMBDA_PYTHON to one)")
    # Earlier layers first, so a later one can leave out what an earlier one ships.
    order = sorted(layers, key=lambda n: min(
        (f.layers.index(n) for f in functions.values() if n in f.layers), default=99))
    for name in order:
        layer = layers[name]
        site = out / "layers" / name / "python"
        shutil.rmtree(site.parent, ignore_errors=True)
        site.mkdir(parents=True)
        if layer.requirements.exists():
            pip_install(layer.requirements, site, layer.runtime, arch or layer.arch)
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: not importable
        dists = distributions(site)
        users = [f for f in functions.values() if name in f.layers]
        for dist, (version, info) in sorted(dists.items()):
            reason = None
            if dist in RUNTIME_PROVIDED and not keep_runtime:
                reason = "in the Lambda runtime"
            elif users and all(
                any(built.layer_dists.get(other, {}).get(dist) == version
                    for other in f.layers[: f.layers.index(name)])
                for f in users
            ):
                reason = "shipped by an earlier layer of every function using this one"
            if reason:
                remove_distribution(site, info)
                del dists[dist]
        copy_source(layer.content, site)
        if python:
            compile_bytecode(python, site)
        built.layer_dirs[name] = site
        built.layer_dists[name] = {d: v for d, (v, _) in dists.items()}
        size = tree_size(site)
        zipped = make_zip(site.parent, out / f"{name}.zip") if zips else 0
        built.layer_sizes[name] = (size, zipped)
    return built


def build_function(function: Function, out: Path, python: str | None) -> tuple[int, int]:
    dest = out / "functions" / function.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    copy_source(function.code, dest)
    if python:
        compile_bytecode(python, dest)
    return tree_size(dest), make_zip(dest, out / "functions" / f"{function.name}.zip")


def mb(n: int) -> str:
    return f"{n / MB:7.2f}"


def table(rows: Iterable[list[str]], header: list[str]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 or i == len(header) - 1 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _inputs_digest(layers: dict[str, Layer], extra: Iterable[Path]) -> str:
    """What a layer build depends on: requirements, the layers' files, this script."""
    import hashlib

    digest = hashlib.sha256()
    files = [*extra]
    for layer in sorted(layers.values(), key=lambda la: la.name):
        digest.update(f"{layer.name} {layer.runtime} {layer.arch}\n".encode())
        files.extend(sorted(p for p in layer.content.rglob("*") if p.is_file()
                            and "__pycache__" not in p.parts and ".egg-info" not in str(p)))
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def sam_layer(name: str, artifacts: Path, template: Path, cache: Path) -> int:
    """``sam build`` (BuildMethod: makefile) of one layer: exactly what ``make package``
    builds, copied into ``$ARTIFACTS_DIR``. sam builds the layers in parallel, so the
    first call builds all of them (the earlier-layer deduplication needs every layer)
    into ``cache`` under a lock, and the others reuse it."""
    import fcntl

    layers, functions = read_stack(template)
    if name not in layers:
        raise TemplateError(f"no layer {name!r} in {template}")
    cache.mkdir(parents=True, exist_ok=True)
    stamp = cache / "inputs.sha256"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        digest = _inputs_digest(layers, [Path(__file__).resolve(), template])
        if not stamp.exists() or stamp.read_text() != digest:
            stamp.unlink(missing_ok=True)
            build_layers(layers, functions, cache, zips=False,
                         log=lambda text: print(text, file=sys.stderr))
            stamp.write_text(digest)
    site = cache / "layers" / name / "python"
    target = artifacts / "python"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(site, target)
    print(f"{name}: {mb(tree_size(target))} MB unzipped -> {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--arch", choices=sorted(PLATFORMS),
                        help="override the template's architecture (e.g. to run locally)")
    parser.add_argument("--keep-runtime-packages", action="store_true",
                        help=f"also ship {', '.join(sorted(RUNTIME_PROVIDED))} (as sam build does)")
    parser.add_argument("--no-pyc", action="store_true", help="ship sources only")
    parser.add_argument("--sam-layer", metavar="NAME",
                        help="sam build's makefile step: build layer NAME into --artifacts")
    parser.add_argument("--artifacts", type=Path, help="sam's ARTIFACTS_DIR (--sam-layer)")
    args = parser.parse_args(argv)
    if args.sam_layer:
        if args.artifacts is None:
            parser.error("--sam-layer needs --artifacts DIR")
        return sam_layer(args.sam_layer, args.artifacts, args.template,
                         args.out / "sam-layer-cache")

    layers, functions = read_stack(args.template)
    args.out.mkdir(parents=True, exist_ok=True)
    built = build_layers(layers, functions, args.out, arch=args.arch,
                         keep_runtime=args.keep_runtime_packages, pyc=not args.no_pyc)
    runtimes = {f.runtime for f in functions.values()}
    python = None if args.no_pyc or len(runtimes) != 1 else find_python(next(iter(runtimes)))

    print(f"\nLayers ({', '.join(sorted({layer.runtime for layer in layers.values()}))}, "
          f"{args.arch or ', '.join(sorted({layer.arch for layer in layers.values()}))}; "
          f"MB = 2^20 bytes; zips in {args.out}/)")
    print(table(
        [[n, mb(s), mb(z), ", ".join(f"{d}" for d in sorted(built.layer_dists[n]))]
         for n, (s, z) in built.layer_sizes.items()],
        ["layer", "unzipped", "zipped", "distributions"],
    ))
    rows = []
    for f in sorted(functions.values(), key=lambda f: f.code.name):
        code, zipped = build_function(f, args.out, python)
        total = code + sum(built.layer_sizes[n][0] for n in f.layers)
        total_zip = zipped + sum(built.layer_sizes[n][1] for n in f.layers)
        rows.append([f.code.name, mb(total), mb(total_zip), mb(code), " + ".join(f.layers)])
    print("\nFunctions (unzipped = function code + its layers, as extracted in Lambda; "
          "limit 250 MB)")
    print(table(rows, ["function", "unzipped", "zipped", "code", "layers"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
