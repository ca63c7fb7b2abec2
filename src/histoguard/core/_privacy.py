"""Pseudonymous slide ids: a salted hash in outputs instead of a slide's path or file name.

With anonymisation on, every output names a slide by :func:`anonymous_id` - ``anon-`` and 16
hex digits of an HMAC-SHA256 of the slide's file stem, keyed by a secret salt - instead of its
path or stem, and the link back (anon id -> original path) is written to a mapping CSV that
only the user holds. Ids depend on the stem and the salt only, so a slide keeps its id when its
folder moves, and a cohort table can be translated with the same salt.

Where the secrets live, unless the user says otherwise:

- the salt: ``$HISTOGUARD_ANON_SALT_FILE``, else ``$XDG_CONFIG_HOME/histoguard/anonymize.salt``
  (``~/.config/...``); created with 32 random bytes, mode 0600, when absent;
- the mapping: beside the salt, ``<salt file>`` with the suffix ``.map.csv``, mode 0600.

Neither may lie inside an output folder (:meth:`Anonymizer.check_outside`): outputs are what
gets shared, and the salt with the outputs would let anyone test guessed file names.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import ConfigError

#: Environment variable naming the salt file.
SALT_ENV = "HISTOGUARD_ANON_SALT_FILE"
ID_PREFIX = "anon-"
MAP_COLUMNS = ("anon_id", "slide_stem", "slide_path")
_SALT_BYTES = 32
_MIN_SALT_BYTES = 16


def anonymous_id(stem: str, salt: bytes) -> str:
    """The pseudonymous id of a slide: ``anon-`` + 16 hex digits of HMAC-SHA256(salt, stem).

    Args:
        stem: the slide's file name without its extension (the id every output used before).
        salt: the secret key (at least 16 bytes).
    """
    digest = hmac.new(salt, stem.encode("utf-8"), hashlib.sha256).hexdigest()
    return ID_PREFIX + digest[:16]


def default_salt_path() -> Path:
    """``$HISTOGUARD_ANON_SALT_FILE``, else ``$XDG_CONFIG_HOME/histoguard/anonymize.salt``."""
    if os.environ.get(SALT_ENV):
        return Path(os.environ[SALT_ENV]).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return config_home / "histoguard" / "anonymize.salt"


def default_map_path(salt_path: Path) -> Path:
    """The mapping CSV beside the salt: ``anonymize.salt`` -> ``anonymize.map.csv``."""
    return salt_path.with_suffix(".map.csv")


def load_salt(path: Path, *, create: bool = True) -> bytes:
    """The salt in ``path``, creating the file (32 random bytes, mode 0600) when it is absent.

    Args:
        path: the salt file.
        create: make the file when absent; False: refuse (reading the ids of past outputs,
            which a new salt would never match).

    Raises:
        ConfigError: the file holds fewer than 16 bytes, or is not a regular file, or is
            absent and not ``create``.
    """
    path = path.expanduser()
    if not path.exists() and not create:
        raise ConfigError(
            f"{path}: no such anonymisation salt; give the --anonymize-salt the slides were "
            "anonymised with"
        )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(_SALT_BYTES))
    if not path.is_file():
        raise ConfigError(f"{path}: the anonymisation salt must be a regular file")
    salt = path.read_bytes()
    if len(salt) < _MIN_SALT_BYTES:
        raise ConfigError(
            f"{path}: the anonymisation salt holds {len(salt)} bytes, need at least "
            f"{_MIN_SALT_BYTES}; delete it to have a random one made"
        )
    return salt


@dataclass(frozen=True)
class Anonymizer:
    """Turns slide paths into pseudonymous ids and keeps the mapping back.

    Attributes:
        salt: the secret key (never printed).
        salt_path: where the salt was read from.
        map_path: the mapping CSV (``anon_id, slide_stem, slide_path``) the user keeps.
    """

    salt: bytes = field(repr=False)
    salt_path: Path
    map_path: Path

    @classmethod
    def load(
        cls, salt_path: Path | None = None, map_path: Path | None = None, *, create: bool = True
    ) -> Anonymizer:
        """Read (or, with ``create``, make) the salt; ``None`` paths take the defaults of the
        module docs."""
        salt_path = (salt_path or default_salt_path()).expanduser().absolute()
        map_path = (map_path or default_map_path(salt_path)).expanduser().absolute()
        salt = load_salt(salt_path, create=create)
        return cls(salt=salt, salt_path=salt_path, map_path=map_path)

    def id_for(self, slide: str | Path) -> str:
        """The slide's pseudonymous id (from its file stem)."""
        return anonymous_id(Path(slide).stem, self.salt)

    def check_outside(self, out_dir: str | Path) -> None:
        """Refuse a salt or mapping file inside ``out_dir`` (what gets shared).

        Raises:
            ConfigError: one of them lies in ``out_dir`` or below it.
        """
        out = Path(out_dir).expanduser().resolve()
        for what, path in (("salt", self.salt_path), ("mapping", self.map_path)):
            if path.resolve().is_relative_to(out):
                raise ConfigError(
                    f"{path}: the anonymisation {what} file lies inside the output folder "
                    f"{out}, which is what gets shared; keep it elsewhere "
                    "(--anonymize-salt / --anonymize-map)"
                )

    def record(self, slides: Iterable[str | Path]) -> None:
        """Add ``slides`` to the mapping CSV (kept rows stay; rewritten atomically, mode 0600)."""
        rows = {(row[0], row[2]): row for row in self._read_map()}
        known = len(rows)
        for slide in map(Path, slides):
            path = str(slide.resolve())
            rows.setdefault((self.id_for(slide), path), (self.id_for(slide), slide.stem, path))
        if known and len(rows) == known:
            return  # nothing new: the file stays as it is
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(MAP_COLUMNS)
        writer.writerows(sorted(rows.values()))
        write_bytes_atomic(self.map_path, buffer.getvalue().encode(), mode=0o600)

    def _read_map(self) -> list[tuple[str, str, str]]:
        if not self.map_path.is_file():
            return []
        with self.map_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return []
            if tuple(header) != MAP_COLUMNS:
                raise ConfigError(
                    f"{self.map_path}: not an anonymisation mapping (columns "
                    f"{', '.join(MAP_COLUMNS)}); choose another --anonymize-map"
                )
            return [(row[0], row[1], row[2]) for row in reader if len(row) == 3]

    def scrub(self, text: str, slide: str | Path) -> str:
        """``text`` with the slide's path (as given and resolved), file name and stem replaced by
        its id: for error messages that name the slide."""
        return scrub_slide(text, slide, self.id_for(slide))


def scrub_slide(text: str, slide: str | Path, name: str) -> str:
    """``text`` with ``slide``'s path (as given, absolute and resolved), file name and stem
    replaced by ``name`` (its pseudonymous id), longest first."""
    slide = Path(slide)
    for known in sorted(
        {str(slide.resolve()), str(slide.absolute()), str(slide), slide.name, slide.stem},
        key=len,
        reverse=True,
    ):
        if known:
            text = text.replace(known, name)
    return text


def is_anonymous_id(name: str) -> bool:
    """Whether ``name`` has the form of :func:`anonymous_id` (``anon-`` + 16 hex digits)."""
    hex_part = name.removeprefix(ID_PREFIX)
    return (
        name.startswith(ID_PREFIX)
        and len(hex_part) == 16
        and all(c in "0123456789abcdef" for c in hex_part)
    )


#: Columns of a cohort table that name a slide or a patient, translated by default.
IDENTIFYING_COLUMNS = ("slide_id", "patient_id")


def anonymize_table(
    table: Path, out: Path, salt: bytes, columns: Sequence[str] = IDENTIFYING_COLUMNS
) -> int:
    """Write ``table`` (a cohort or centers CSV/TSV) to ``out`` with each cell of ``columns``
    replaced by its :func:`anonymous_id` - the ids ``--anonymize`` outputs carry, so the table
    joins the anonymised feature files. A ``slide_id`` must be the slide's file stem; cells
    already of the ``anon-`` form and empty cells stay as they are. Other columns are copied.

    Args:
        table: the table to translate (``slide_id`` required among ``columns``' defaults).
        out: the translated table (written atomically; same delimiter as ``table``).
        salt: the salt of the ``--anonymize`` runs.
        columns: the columns to translate; those of the defaults the table lacks are skipped,
            a named one it lacks is an error.

    Returns:
        The number of data rows written.

    Raises:
        ConfigError: unreadable table, a missing column, or ``out`` is ``table``.
    """
    from histoguard.core._tables import read_delimited

    if out.expanduser().resolve() == table.expanduser().resolve():
        raise ConfigError(f"{out}: the translated table would overwrite the original; choose "
                          "another --out")  # fmt: skip
    header, rows = read_delimited(table, error=ConfigError, rows_are="slide")
    wanted = [c for c in columns if c in header or tuple(columns) != IDENTIFYING_COLUMNS]
    missing = [c for c in (*wanted, *(["slide_id"] if not wanted else [])) if c not in header]
    if missing:
        raise ConfigError(f"{table}: no column {', '.join(missing)} to anonymise (columns: "
                          f"{', '.join(header)})")  # fmt: skip
    positions = [header.index(c) for c in wanted]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if table.suffix.lower() == ".tsv" else ",")
    writer.writerow(header)
    for _, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        for i in positions:
            if cells[i] and not is_anonymous_id(cells[i]):
                cells[i] = anonymous_id(cells[i], salt)
        writer.writerow(cells)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, buffer.getvalue().encode())
    return len(rows)
