"""The image in a request body: a multipart form's file, or the raw body with an image content
type. Parsed in memory (python-multipart's parser, the one Starlette uses, fed the body already
read within its limit): nothing is spooled to disk and no name a client sends becomes a path."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

RAW_TYPES = ("application/octet-stream",)  # and image/*


class UploadError(Exception):
    """A body without an image the server can take: ``status`` 400 (empty, malformed) or 415
    (a content type that is neither an image nor a form)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _is_image_type(media: str) -> bool:
    return media.startswith("image/") or media in RAW_TYPES


def image_payload(body: bytes, content_type: str | None) -> tuple[bytes, str]:
    """The image's bytes and how errors name it: ``'<file name>'`` of a form's file (printable
    characters only, shortened) or ``(request body)``."""
    media, options = parse_options_header(content_type or "")
    media = media.decode("latin-1").lower()
    if media == "multipart/form-data":
        part, filename = _form_file(body, options.get(b"boundary"))
        where = repr(_printable(filename)) if filename else "(form file)"
    elif _is_image_type(media):
        part, where = body, "(request body)"
    else:
        shown = f"content type {media!r}" if media else "no content type"
        raise UploadError(
            415, f"{shown}: send the photo as a multipart form's file or as the body with an image/* content type"
        )
    if not part:
        raise UploadError(400, f"the photo {where} is empty (0 bytes)")
    return part, where


def _printable(name: str, limit: int = 80) -> str:
    name = "".join(ch for ch in name if ch.isprintable())
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _form_file(body: bytes, boundary: bytes | None) -> tuple[bytes, str | None]:
    """The first part of a multipart form that is a file (or named ``file``)."""
    if not boundary:
        raise UploadError(400, "a multipart form without a boundary in its content type")
    parts: list[dict] = []
    current: dict = {}
    header: list[bytes] = [b"", b""]

    def begin():
        current.clear()
        current.update(headers={}, data=bytearray())

    def header_field(data, start, end):
        header[0] += data[start:end]

    def header_value(data, start, end):
        header[1] += data[start:end]

    def header_end():
        current["headers"][header[0].decode("latin-1").lower()] = header[1].decode("latin-1")
        header[0], header[1] = b"", b""

    def part_data(data, start, end):
        current["data"] += data[start:end]

    def part_end():
        parts.append(dict(current))

    callbacks = dict(
        on_part_begin=begin,
        on_header_field=header_field,
        on_header_value=header_value,
        on_header_end=header_end,
        on_part_data=part_data,
        on_part_end=part_end,
    )
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart's errors for a malformed form
        raise UploadError(400, f"a malformed multipart form: {' '.join(str(error).split())}") from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", ""))
        filename = disposition.get(b"filename")
        if filename is None and disposition.get(b"name") != b"file":
            continue
        media = parse_options_header(part["headers"].get("content-type", "application/octet-stream"))[0]
        media = media.decode("latin-1").lower()
        if not _is_image_type(media):
            raise UploadError(415, f"the form's file has content type {media!r}: send an image")
        return bytes(part["data"]), filename.decode("utf-8", "replace") if filename else None
    raise UploadError(400, "the multipart form has no file (send the photo in a field named file)")
