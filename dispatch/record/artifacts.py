"""What an external agent hands in, checked before anything is stored: its type is one the
action accepts, its size within bounds, a diff is a unified diff (read by ``unidiff``; its
files and lines counted), a screenshot a PNG or JPEG in base64. An artifact is data: the portal
shows it as text or as an image, never as HTML."""

from __future__ import annotations

import base64
import binascii
import enum

import msgspec
from itsdangerous import BadSignature, URLSafeSerializer
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from dispatch.infra.errors import PayloadTooLarge, Unprocessable
from dispatch.record.keys import derive

__all__ = [
    "ARTIFACT_PATH",
    "MAX_IMAGE_BYTES",
    "MAX_TEXT_BYTES",
    "ArtifactLinks",
    "ArtifactType",
    "Checked",
    "DiffFile",
    "check_artifact",
]

MAX_TEXT_BYTES = 1_000_000
"""Code, text and diffs: at most 1 MB (UTF-8)."""
MAX_IMAGE_BYTES = 4_000_000
"""A screenshot: at most 4 MB (decoded)."""
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


ARTIFACT_PATH = "/artifacts"
"""Where a released artifact is seen by whoever holds its link."""


class ArtifactLinks:
    """A link to one artifact that needs no login (the requester's, to see the change they
    asked for): its id signed with this deployment's key, so no other id can be guessed."""

    def __init__(self, secret: bytes, base_url: str) -> None:
        self._signer = URLSafeSerializer(derive(secret, "artifact-links"), salt="artifact")
        self._base = base_url.rstrip("/")

    def url(self, artifact_id: int) -> str:
        return f"{self._base}{ARTIFACT_PATH}/{self._signer.dumps(artifact_id)}"

    def read(self, token: str) -> int | None:
        """The artifact a link's token names (None: not one of ours)."""
        try:
            found = self._signer.loads(token)
        except BadSignature:
            return None
        return found if isinstance(found, int) else None


class ArtifactType(enum.StrEnum):
    CODE = "code"
    TEXT = "text"
    DIFF = "diff"
    SCREENSHOT = "screenshot"


class DiffFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    added: int
    removed: int
    status: str
    """added, removed, modified or renamed."""


class Checked(msgspec.Struct, frozen=True, kw_only=True):
    """An artifact fit to store: its content as stored and what it holds at a glance."""

    type: ArtifactType
    content: str
    size_bytes: int
    summary: dict[str, object]


def check_artifact(kind: str, content: str, accepted: tuple[str, ...]) -> Checked:
    """``content`` of type ``kind`` checked for an action that accepts ``accepted`` types;
    a clear error (413 for a size, 422 otherwise) if it is not fit."""
    try:
        artifact_type = ArtifactType(kind)
    except ValueError:
        raise Unprocessable(
            f"type: one of {[t.value for t in ArtifactType]}, not {kind!r}",
            extra={"field": "type"},
        ) from None
    if artifact_type.value not in accepted:
        raise Unprocessable(
            f"type: this task takes {list(accepted)}, not {kind!r}", extra={"field": "type"}
        )
    if "\x00" in content:
        raise Unprocessable("content: no NUL characters", extra={"field": "content"})
    if artifact_type == ArtifactType.SCREENSHOT:
        return _screenshot(content)
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise PayloadTooLarge(
            f"content: {size} bytes; a {kind} is at most {MAX_TEXT_BYTES} bytes",
            extra={"field": "content", "limit_bytes": MAX_TEXT_BYTES},
        )
    if not content.strip():
        raise Unprocessable("content: empty", extra={"field": "content"})
    summary: dict[str, object] = {}
    if artifact_type == ArtifactType.DIFF:
        summary = _diff_summary(content)
    else:
        summary = {"lines": content.count("\n") + (not content.endswith("\n"))}
    return Checked(type=artifact_type, content=content, size_bytes=size, summary=summary)


def _diff_summary(content: str) -> dict[str, object]:
    """Files and lines of a unified diff; refused if it is not one (or changes nothing)."""
    try:
        patch = PatchSet(content)
    except UnidiffParseError as exc:
        raise Unprocessable(
            f"content: not a unified diff ({exc})", extra={"field": "content"}
        ) from None
    if not len(patch):
        raise Unprocessable(
            "content: not a unified diff (no '--- a/... +++ b/... @@' file in it)",
            extra={"field": "content"},
        )
    files = [
        DiffFile(
            path=f.path,
            added=f.added,
            removed=f.removed,
            status=(
                "added"
                if f.is_added_file
                else "removed"
                if f.is_removed_file
                else "renamed"
                if f.is_rename
                else "modified"
            ),
        )
        for f in patch
    ]
    return {
        "files": msgspec.to_builtins(files),
        "added": sum(f.added for f in files),
        "removed": sum(f.removed for f in files),
    }


def _screenshot(content: str) -> Checked:
    """A PNG or JPEG, base64 (a ``data:`` URL's prefix allowed); stored as the base64."""
    encoded = content.split(",", 1)[1] if content.startswith("data:") else content
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise PayloadTooLarge(
            f"content: a screenshot is at most {MAX_IMAGE_BYTES} bytes",
            extra={"field": "content", "limit_bytes": MAX_IMAGE_BYTES},
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable(
            "content: a screenshot is a PNG or JPEG in base64", extra={"field": "content"}
        ) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(
            f"content: {len(data)} bytes; a screenshot is at most {MAX_IMAGE_BYTES} bytes",
            extra={"field": "content", "limit_bytes": MAX_IMAGE_BYTES},
        )
    if data.startswith(_PNG):
        media = "image/png"
    elif data.startswith(_JPEG):
        media = "image/jpeg"
    else:
        raise Unprocessable(
            "content: a screenshot is a PNG or JPEG (its bytes say neither)",
            extra={"field": "content"},
        )
    return Checked(
        type=ArtifactType.SCREENSHOT,
        content=base64.b64encode(data).decode(),
        size_bytes=len(data),
        summary={"media_type": media},
    )
