"""Release layout: the whole input dataset, made safe, as a raw BIDS dataset (``--layout release``).

The participant stages write the derivative (``derivatives/bidsdeface``) as in the
derivative layout; this stage then fills the release root, one subject at a time:

- defaced scans under their raw names (hard links to the derivative's images);
- every other image of the subject's other datatypes (func, dwi, fmap, perf...) with its
  NIfTI header's text fields and extensions cleared, voxels byte for byte;
- a sidecar per image, inheritance resolved, scrubbed with the schema's fields for its
  datatype and suffix (:func:`bidsdeface.policy.release_fields`), dates shifted;
- events and ASL context tables screened (:func:`bidsdeface.scrub.scrub_events`);
  ``bval``/``bvec`` and physiological or stimulus recordings copied when they hold numbers only.

Anything else is left out and counted by reason, never named: head images that were not
defaced, files the BIDS schema does not define, and kinds not carried yet.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib

from .bidsnames import split_bids_name
from .config import Config
from .discover import ScanJob, read_metadata
from .errors import ScanError
from .files import MISSING, Table, atomic_path, read_json_object, remove_stale_temporaries, write_json_atomic
from .identity import SubjectIdentity, needs_private_folder, private_folder
from .outputs import OutputPaths
from .policy import CLOCK_KEYS, release_fields
from .scrub import ScrubReport, cleared_header, scrub_events, scrub_sidecar, value_problem
from .standards import is_raw_bids_file

log = logging.getLogger(__name__)

# nibabel's level for the images bidsdeface writes
CARRIED_GZIP_LEVEL = 1
COPY_CHUNK_BYTES = 1 << 20
# Datatypes whose images show a head: carried only when this run defaced them.
HEAD_IMAGE_DATATYPES: frozenset[str] = frozenset({"anat", "pet"})
# Keys of a defaced scan's derivative sidecar that a raw file does not carry.
DERIVATIVE_ONLY_KEYS: frozenset[str] = frozenset({"Description", "Sources", "SkullStripped"})
RELEASE_RECORD_SUFFIX = "_release.json"
# Identifiers users often build from subject and session labels: relabelled like file names.
LABELLED_REFERENCE_KEYS: frozenset[str] = frozenset({"B0FieldSource", "B0FieldIdentifier"})
GRADIENT_EXTENSIONS: frozenset[str] = frozenset({".bval", ".bvec"})
RECORDING_SUFFIXES: frozenset[str] = frozenset({"physio", "stim"})
SCREENED_TABLE_SUFFIXES: frozenset[str] = frozenset({"events", "aslcontext"})
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
NIFTI = (".nii.gz", ".nii")


class LeftOut(Exception):
    """An input file the release does not carry; the message is the reason (never the file's name)."""


@dataclass(frozen=True)
class ReleasedFile:
    """One file of the release: its path below the release root, what was done, its SHA-256."""

    path: str
    action: str
    sha256: str


@dataclass
class SubjectRelease:
    """What one subject's release holds, what was left out (by reason) and what scrubbing did.

    ``stamps`` maps an input file to its size and time and its copy's size, time and SHA-256,
    as an earlier run left them: a copy whose four stamps still match is not made again.
    """

    files: list[ReleasedFile] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    scrub: dict[str, dict[str, Any]] = field(default_factory=dict)
    stamps: dict[str, list[Any]] = field(default_factory=dict)

    def unchanged_copy(self, source: Path, target: Path, relpath: str) -> str | None:
        """Return the SHA-256 of ``target`` when it is the copy an earlier run made of ``source`` as it is now."""
        if not target.is_file():
            return None
        earlier = self.stamps.get(relpath)
        now = [*_stat(source), *_stat(target)]
        return earlier[4] if earlier is not None and earlier[:4] == now else None

    def copied(self, source: Path, target: Path, relpath: str, sha256: str) -> None:
        """Remember the copy ``target`` of ``source`` (its stamps, for the next run)."""
        self.stamps[relpath] = [*_stat(source), *_stat(target), sha256]


def _stat(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _stamps_path(config: Config, identity: SubjectIdentity) -> Path | None:
    """Where a subject's copy stamps are kept: the private folder (they name input files), if the run has one."""
    if not needs_private_folder(config):
        return None
    return private_folder(config) / "release" / f"sub-{identity.label}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _split(name: str) -> tuple[list[tuple[str, str]], str, str] | None:
    """Entities, suffix and extension of a BIDS file name, or None when it is not one."""
    try:
        return split_bids_name(name)
    except ValueError:
        return None


def release_subject(
    config: Config, identity: SubjectIdentity, jobs: list[ScanJob], stamps: dict[str, list[Any]] | None = None
) -> SubjectRelease:
    """Fill the release root with one subject's files; return what was released and left out.

    Parameters
    ----------
    config : Config
        Run settings; ``release_dir`` is the release root.
    identity : SubjectIdentity
        The subject's output labels and date offset.
    jobs : list of ScanJob
        The subject's scans selected for defacing (finished ones are released defaced).
    stamps : dict, optional
        The copy stamps an earlier run left (see :class:`SubjectRelease`).
    """
    assert config.release_dir is not None
    release = SubjectRelease(stamps=dict(stamps or {}))
    by_path = {job.relpath: job for job in jobs}
    subject_dir = config.bids_dir / f"sub-{identity.label}"
    files = [path for path in subject_dir.rglob("*") if path.is_file() or path.is_symlink()]
    # fieldmaps last: their IntendedFor may only name files already released
    for path in sorted(files, key=lambda path: (path.parent.name == "fmap", path)):
        relpath = path.relative_to(config.bids_dir).as_posix()
        try:
            _release_file(config, identity, relpath, by_path.get(relpath), release)
        except LeftOut as reason:
            release.left_out[str(reason)] += 1
        except (OSError, ValueError, ScanError, nib.filebasedimages.ImageFileError) as exc:
            release.left_out[f"unreadable ({type(exc).__name__})"] += 1
    return release


def _release_file(
    config: Config, identity: SubjectIdentity, relpath: str, job: ScanJob | None, release: SubjectRelease
) -> None:
    """Release one input file (or count it as left out, with the reason)."""
    parts = relpath.split("/")
    parsed = _split(parts[-1])
    if any(part.startswith(".") for part in parts) or parsed is None or len(parts) not in (3, 4):
        if not (len(parts) in (2, 3) and re.search(r"_(scans|sessions)\.(tsv|json)$", parts[-1])):
            release.left_out["not a BIDS file"] += 1
        return  # scans and sessions tables are written by the tables stage
    entities, suffix, extension = parsed
    datatype = parts[-2]
    keys = tuple(key for key, _ in entities)
    if extension == ".json":
        return  # sidecars travel with their data files, inheritance resolved
    folders = [f"sub-{identity.label}", *(parts[1:2] if len(parts) == 4 else [])]
    named = [f"{key}-{value}" for key, value in entities if key in ("sub", "ses")]
    if named != folders or not is_raw_bids_file(datatype, suffix, extension, keys):
        release.left_out["not a BIDS file"] += 1  # (also: a name whose labels are not its folders')
        return
    target = config.release_dir / identity.output_relpath(relpath)  # type: ignore[operator]
    if extension in NIFTI:
        _release_image(config, identity, relpath, job, target, release)
    elif suffix in SCREENED_TABLE_SUFFIXES and extension == ".tsv":
        _release_table(config, relpath, target, release)
    elif extension in GRADIENT_EXTENSIONS:
        _release_gradients(config, relpath, target, release)
    elif suffix in RECORDING_SUFFIXES and extension == ".tsv.gz":
        _release_recording(config, identity, relpath, target, release)
    else:
        release.left_out[f"{suffix}{extension} files are not carried yet"] += 1


def _release_image(
    config: Config, identity: SubjectIdentity, relpath: str, job: ScanJob | None, target: Path, release: SubjectRelease
) -> None:
    """Release a defaced scan (linked from the derivative) or a non-head image (header cleared)."""
    source = config.bids_dir / relpath
    datatype = relpath.split("/")[-2]
    if job is not None:
        outputs = OutputPaths.for_job(config, job, identity)
        if not outputs.complete():
            release.left_out["head image not defaced (failed, or failed QC)"] += 1
            return
        _release_defaced(config, outputs, target, release)
        return
    if datatype in HEAD_IMAGE_DATATYPES:
        release.left_out["head image not selected for defacing"] += 1
        return
    digest = release.unchanged_copy(source, target, relpath)
    if digest is None:
        cleared = carry_nifti(source, target)
        digest = _sha256(target)
        release.copied(source, target, relpath, digest)
        if cleared.removed:
            release.scrub[_below(target, config)] = {"Header": cleared.as_record()}
    release.files.append(ReleasedFile(_below(target, config), "header-cleared", digest))
    _release_sidecar(config, identity, source, target, release)


def _below(path: Path, config: Config) -> str:
    return path.relative_to(config.release_dir).as_posix()  # type: ignore[arg-type]


def _release_defaced(config: Config, outputs: OutputPaths, target: Path, release: SubjectRelease) -> None:
    """Link the derivative's defaced image to its raw name, and write its raw sidecar.

    The sidecar is the derivative's (scrubbed already) without the keys only a derivative
    has and, for kinds BIDS defines, without keys outside the schema's fields for the file
    (CT, which BIDS does not define yet, keeps the CT allow-list's keys).
    """
    root = config.release_dir
    assert root is not None
    image = target.with_name(target.name + ".gz") if target.name.endswith(".nii") else target  # written gzipped
    if not (image.is_file() and os.path.samefile(image, outputs.image)):  # renaming a link onto itself is a no-op
        with atomic_path(image) as temporary:
            temporary.unlink()
            try:
                os.link(outputs.image, temporary)
            except OSError:
                shutil.copyfile(outputs.image, temporary)
    sidecar = read_json_object(outputs.sidecar, ScanError)
    entities, suffix, _ = split_bids_name(image.name)
    keys, datatype = tuple(key for key, _ in entities), image.parent.name
    kept = set(sidecar) - DERIVATIVE_ONLY_KEYS
    if is_raw_bids_file(datatype, suffix, ".nii.gz", keys):
        kept &= (
            release_fields(datatype, suffix, ".nii.gz", keys) | CLOCK_KEYS | set(config.scrub_policy.keep_sidecar_keys)
        )
    json_path = image.with_name(image.name.removesuffix(".nii.gz") + ".json")
    write_json_atomic(json_path, {key: value for key, value in sidecar.items() if key in kept})
    outside = sorted(set(sidecar) - DERIVATIVE_ONLY_KEYS - kept)  # names the allow-lists hold: standard names
    if outside:
        release.scrub[json_path.relative_to(root).as_posix()] = {"Sidecar": {"Removed": outside}}
    release.files.append(ReleasedFile(image.relative_to(root).as_posix(), "defaced", _sha256(image)))
    release.files.append(ReleasedFile(json_path.relative_to(root).as_posix(), "scrubbed", _sha256(json_path)))


def carry_nifti(source: Path, target: Path) -> ScrubReport:
    """Copy a NIfTI image with its header's text fields and extensions cleared and its voxels byte for byte.

    The header is read from the file as it is (scaling included) and the voxel bytes are
    streamed (never all in memory); bytes after the image data are not copied. Returns
    which header fields held something.

    Raises
    ------
    LeftOut
        The file holds fewer voxel bytes than its header declares.
    """
    header_class = type(nib.load(source).header)  # NIfTI-1 or NIfTI-2 (nibabel reads only the header)
    opener = gzip.open if source.name.endswith(".gz") else open
    with opener(source, "rb") as stream, atomic_path(target) as temporary:
        header = header_class.from_fileobj(stream)
        expected = header.get_data_dtype().itemsize * math.prod(int(n) for n in header.get_data_shape())
        clean, report = cleared_header(header)
        clean["vox_offset"] = clean.single_vox_offset
        stream.seek(int(header.get_data_offset()))
        with _output_stream(temporary, gzipped=target.name.endswith(".gz")) as writer:
            clean.write_to(writer)
            while expected:
                chunk = stream.read(min(COPY_CHUNK_BYTES, expected))
                if not chunk:
                    raise LeftOut("image data shorter than its header declares")
                writer.write(chunk)
                expected -= len(chunk)
    return report


@contextmanager
def _output_stream(path: Path, gzipped: bool) -> Iterator[BinaryIO]:
    """Open ``path`` for writing, through gzip (no file name, no time stamp) when ``gzipped``."""
    with open(path, "wb") as raw:
        if not gzipped:
            yield raw
            return
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=CARRIED_GZIP_LEVEL, mtime=0) as out:
            yield out  # type: ignore[misc]


def _release_sidecar(
    config: Config, identity: SubjectIdentity, source: Path, target: Path, release: SubjectRelease
) -> None:
    """Write the image's sidecar (inheritance resolved), scrubbed with the schema's fields for its kind."""
    entities, suffix, extension = split_bids_name(source.name)
    keys = tuple(key for key, _ in entities)
    fields = release_fields(source.parent.name, suffix, extension, keys)
    metadata = read_metadata(source)
    intended = metadata.pop("IntendedFor", None)
    for key in sorted(LABELLED_REFERENCE_KEYS & set(metadata)):
        metadata[key] = _relabelled(metadata[key], identity)
        if re.search(rf"sub-(?!{re.escape(identity.output_label)}(?![A-Za-z0-9]))", json.dumps(metadata[key])):
            del metadata[key]  # names another subject, whose label this subject's files must not carry
    clean, report = scrub_sidecar(metadata, "mri", config.scrub_policy, identity.date_offset, fields)
    targets = intended_targets(config, identity, intended) if "IntendedFor" in fields else []
    if targets:
        clean["IntendedFor"] = targets
    task = dict(entities).get("task")
    if "TaskName" in fields and task and "TaskName" not in clean:
        clean["TaskName"] = task  # required; the name's own label stands in for screened-out text
    if not clean and not metadata:
        return
    json_path = target.with_name(target.name.removesuffix(extension) + ".json")
    write_json_atomic(json_path, clean)
    release.files.append(ReleasedFile(_below(json_path, config), "scrubbed", _sha256(json_path)))
    record = {"Sidecar": report.as_record()} if report.as_record() else {}
    if intended is not None:
        count = len(intended) if isinstance(intended, list) else 1
        record["IntendedFor"] = {"Kept": len(targets), "Dropped": count - len(targets)}
    if record:
        release.scrub[_below(json_path, config)] = record


def _relabelled(value: Any, identity: SubjectIdentity) -> Any:
    """Return a string, or the strings of a list, with the subject's input labels replaced (other values kept)."""
    if isinstance(value, list):
        return [_relabelled(item, identity) for item in value]
    return identity.output_text(value) if isinstance(value, str) else value


def intended_targets(config: Config, identity: SubjectIdentity, intended: Any) -> list[str]:
    """Return ``IntendedFor`` rewritten as BIDS URIs to the released files it names (others are dropped).

    Entries may be BIDS URIs (``bids::sub-01/func/...``) or paths below the subject's folder
    (the older form); only files of this subject that are in the release are kept, named as
    released (pseudonymised labels included).

    >>> from types import SimpleNamespace
    >>> root = Path(__import__("tempfile").mkdtemp())
    >>> _ = (root / "sub-x7/func").mkdir(parents=True), (root / "sub-x7/func/sub-x7_task-a_bold.nii.gz").touch()
    >>> who = SubjectIdentity("01", "x7", None, {})
    >>> intended_targets(SimpleNamespace(release_dir=root), who,
    ...                  ["func/sub-01_task-a_bold.nii.gz", "bids::sub-01/func/sub-01_task-b_bold.nii.gz", 7])
    ['bids::sub-x7/func/sub-x7_task-a_bold.nii.gz']
    """
    entries = intended if isinstance(intended, list) else [intended]
    kept = []
    for entry in entries:
        if not isinstance(entry, str):
            continue
        path = entry.removeprefix("bids::") if entry.startswith("bids::") else f"sub-{identity.label}/{entry}"
        parts = path.split("/")
        if parts[0] != f"sub-{identity.label}" or ".." in parts or _split(parts[-1]) is None:
            continue
        released = identity.output_relpath(path)
        for name in (released, released + ".gz"):
            if (config.release_dir / name).is_file():  # type: ignore[operator]
                kept.append(f"bids::{name}")
                break
    return kept


def _release_table(config: Config, relpath: str, target: Path, release: SubjectRelease) -> None:
    """Write a screened copy of an events or ASL context table (column descriptions are not carried)."""
    source = config.bids_dir / relpath
    table = Table.parse(source.read_text(encoding="utf-8-sig"))
    clean, report = scrub_events(table, read_metadata(source))
    with atomic_path(target) as temporary:
        temporary.write_text(clean.to_text())
    release.files.append(ReleasedFile(_below(target, config), "scrubbed", _sha256(target)))
    if report.as_record():
        release.scrub[_below(target, config)] = {"Table": report.as_record()}


def _release_gradients(config: Config, relpath: str, target: Path, release: SubjectRelease) -> None:
    """Copy a ``bval``/``bvec`` file that holds numbers only."""
    text = (config.bids_dir / relpath).read_text(encoding="ascii")
    if not all(NUMBER.fullmatch(token) for token in text.split()):
        raise LeftOut("gradient table holding more than numbers")
    with atomic_path(target) as temporary:
        temporary.write_text(text)
    release.files.append(ReleasedFile(_below(target, config), "copied", _sha256(target)))


def _numeric_line(line: bytes) -> bool:
    return all(cell == b"n/a" or NUMBER.fullmatch(cell.decode("ascii", "replace")) for cell in line.split())


def _release_recording(
    config: Config, identity: SubjectIdentity, relpath: str, target: Path, release: SubjectRelease
) -> None:
    """Copy a physiological or stimulus recording that holds numbers only (streamed), with its sidecar scrubbed.

    The copy gets a clean gzip header (no file name or time stamp).
    """
    source = config.bids_dir / relpath
    columns = read_metadata(source).get("Columns")
    if columns is None or value_problem("Columns", columns) is not None:
        raise LeftOut("recording whose column names are missing or fail screening")  # BIDS requires them
    digest = release.unchanged_copy(source, target, relpath)
    if digest is None:
        with gzip.open(source, "rb") as stream, atomic_path(target) as temporary:
            with _output_stream(temporary, gzipped=True) as out:
                for line in stream:
                    if not _numeric_line(line):
                        raise LeftOut("recording holding more than numbers")
                    out.write(line)
        digest = _sha256(target)
        release.copied(source, target, relpath, digest)
    release.files.append(ReleasedFile(_below(target, config), "copied", digest))
    _release_sidecar(config, identity, source, target, release)


def _earlier_stamps(path: Path | None) -> dict[str, list[Any]]:
    """Return the copy stamps at ``path``; none when there is no file or it is unreadable (everything is copied)."""
    if path is None or not path.is_file():
        return {}
    try:
        copies = json.loads(path.read_text()).get("Copies", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: value for key, value in copies.items() if isinstance(value, list) and len(value) == 5}


def write_subject_record(path: Path, release: SubjectRelease) -> None:
    """Write what a subject's release holds (the manifest is built from these records)."""
    write_json_atomic(
        path,
        {
            "Files": [[item.path, item.action, item.sha256] for item in release.files],
            "LeftOut": dict(sorted(release.left_out.items())),
        },
    )


MANIFEST_COLUMNS: tuple[str, ...] = ("filename", "action", "sha256")


def manifest_table(records: list[dict[str, Any]], dataset_files: list[ReleasedFile]) -> tuple[Table, Counter[str]]:
    """Return the release manifest (one row per released file) and the left-out files by reason."""
    rows = [(item.path, item.action, item.sha256) for item in dataset_files]
    left_out: Counter[str] = Counter()
    for record in records:
        rows += [tuple(str(cell) for cell in row) for row in record.get("Files", [])]
        left_out.update({str(reason): int(count) for reason, count in record.get("LeftOut", {}).items()})
    return Table(MANIFEST_COLUMNS, tuple(sorted(rows))), left_out


def left_out_table(left_out: Counter[str]) -> Table:
    """Return the input files left out, counted by reason."""
    rows = tuple((reason, str(count)) for reason, count in sorted(left_out.items()))
    return Table(("reason", "files"), rows or ((MISSING, "0"),))


RELEASE_README = """# De-identified dataset

Made by bidsdeface {version} from a BIDS dataset, for sharing:

- head images (anatomical, CT, PET) are defaced; the masks, QC figures and reports are in
  `derivatives/bidsdeface`, with `release_manifest.tsv` (every file here, what was done to it,
  its SHA-256) and `release_left_out.tsv` (input files not carried, counted by reason);
- other images are carried with their NIfTI header text cleared, voxels unchanged;
- sidecars keep only the BIDS schema's fields for their datatype that pass screening, with
  dates shifted by one offset per subject;
- events tables keep timing, numbers and values that pass screening (others are n/a).

The input's own README, CHANGES and free text are not carried.
"""
RELEASE_CHANGES = "1.0.0\n  - De-identified release made by bidsdeface {version}.\n"
RELEASE_BIDSIGNORE: tuple[str, ...] = ("*_ct.nii.gz", "*_ct.nii", "*_ct.json")
MANIFEST = "release_manifest.tsv"
LEFT_OUT = "release_left_out.tsv"


def release_dataset_files(description: dict[str, Any]) -> dict[str, bytes]:
    """Return the release root's regenerated dataset files by name (``description``: the raw dataset description)."""
    from . import __version__
    from .files import json_bytes

    return {
        "dataset_description.json": json_bytes(description),
        "README.md": RELEASE_README.format(version=__version__).encode(),
        "CHANGES": RELEASE_CHANGES.format(version=__version__).encode(),
        ".bidsignore": ("\n".join(RELEASE_BIDSIGNORE) + "\n").encode(),
    }


def publish_subject(config: Config, identity: SubjectIdentity, jobs: list[ScanJob]) -> None:
    """Release one subject, write its tables in the release root, and record both in the derivative.

    Files an earlier run released that this one does not (a scan now failing QC, a stricter
    policy) are removed, so the subject's folder holds exactly what the manifest lists.
    Call it holding the subject's lock, after the subject's scans and derivative files are written.
    """
    from .metadata import write_scrub_record

    label = identity.output_label
    folder = config.release_dir / f"sub-{label}"  # type: ignore[operator]
    stale = remove_stale_temporaries(folder)
    stamps_path = _stamps_path(config, identity)
    release = release_subject(config, identity, jobs, _earlier_stamps(stamps_path))
    if stamps_path is not None:
        write_json_atomic(stamps_path, {"Copies": release.stamps})
    _add_tables(config, identity, release)
    released = {item.path for item in release.files}
    withdrawn = [path for path in folder.rglob("*") if path.is_file() and _below(path, config) not in released]
    for path in withdrawn:
        path.unlink()
    write_subject_record(config.output_dir / f"sub-{label}" / f"sub-{label}{RELEASE_RECORD_SUFFIX}", release)
    write_scrub_record(config, identity, release.scrub)
    actions = Counter(item.action for item in release.files)
    done = ", ".join(f"{count} {action}" for action, count in sorted(actions.items())) or "nothing"
    reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(release.left_out.items()))
    log.info(
        "sub-%s: release: %d file(s) (%s); %d input file(s) left out%s%s",
        label,
        len(release.files),
        done,
        sum(release.left_out.values()),
        f" ({reasons})" if reasons else "",
        f"; {len(withdrawn) + stale} file(s) of an earlier or interrupted run removed" if withdrawn or stale else "",
    )


def _add_tables(config: Config, identity: SubjectIdentity, release: SubjectRelease) -> None:
    """Write the subject's sessions and scans tables in the release root, and add them to ``release``."""
    from .metadata import write_subject_tables

    root = config.release_dir
    assert root is not None
    for name, report in write_subject_tables(config, identity, release=True).items():
        release.scrub[name] = {"Table": report.as_record()}
        for written in (name, name.removesuffix(".tsv") + ".json"):  # the table, its column descriptions
            if (root / written).is_file():
                release.files.append(ReleasedFile(written, "scrubbed", _sha256(root / written)))


def publish_dataset(config: Config, description: dict[str, Any]) -> None:
    """Write the release root's dataset files and participants table, and the manifest in the derivative.

    Call it holding the dataset lock: it reads every subject's record as it is now.
    ``description`` is the derivative's dataset description (the release's is made from it).
    """
    from .files import write_bytes_atomic
    from .metadata import write_participants

    root = config.release_dir
    assert root is not None
    raw = {key: ("raw" if key == "DatasetType" else value) for key, value in description.items()}
    raw.pop("SourceDatasets", None)
    dataset_files = []
    for name, content in release_dataset_files(raw).items():
        if not (root / name).is_file() or (root / name).read_bytes() != content:
            write_bytes_atomic(root / name, content)
        dataset_files.append(ReleasedFile(name, "regenerated", hashlib.sha256(content).hexdigest()))
    if write_participants(config, release=True) is not None:
        for name in ("participants.tsv", "participants.json"):
            if (root / name).is_file():
                dataset_files.append(ReleasedFile(name, "scrubbed", _sha256(root / name)))
    records = [
        read_json_object(path, ScanError)
        for path in sorted(config.output_dir.glob(f"sub-*/sub-*{RELEASE_RECORD_SUFFIX}"))
    ]
    manifest, left_out = manifest_table(records, dataset_files)
    left_out.update(dataset_left_out(config.bids_dir))
    write_bytes_atomic(config.output_dir / MANIFEST, manifest.to_text().encode())
    write_bytes_atomic(config.output_dir / LEFT_OUT, left_out_table(left_out).to_text().encode())
    log.info("release: %d file(s) in %s; manifest %s", len(manifest.rows), root, config.output_dir / MANIFEST)


# Top-level files a release regenerates or scrubs (the rest are left out).
DATASET_FILES_REPLACED: frozenset[str] = frozenset(
    {"dataset_description.json", "participants.tsv", "participants.json", "README", "README.md", "README.txt",
     "README.rst", "CHANGES"}
)  # fmt: skip
STANDARD_FOLDERS: frozenset[str] = frozenset({"sourcedata", "derivatives", "code", "stimuli", "phenotype"})


def dataset_left_out(bids_dir: Path) -> Counter[str]:
    """Count the input's top-level files and folders that a release does not carry, by reason.

    Folders are counted, not walked (``sourcedata`` may hold a million DICOM files);
    only standard folder names are shown.
    """
    left_out: Counter[str] = Counter()
    for path in sorted(bids_dir.iterdir()):
        name = path.name
        if path.is_dir():
            if not name.startswith("sub-"):
                left_out[f"folder {name}/" if name in STANDARD_FOLDERS else "other top-level folder"] += 1
        elif name in DATASET_FILES_REPLACED:
            continue
        elif re.fullmatch(r"(?:[a-z]+-[A-Za-z0-9]+_)*[A-Za-z0-9]+\.json", name):
            left_out["inherited sidecar (scrubbed into each file's own sidecar)"] += 1
        else:
            left_out["other top-level file (free text or not BIDS)"] += 1
    return left_out
