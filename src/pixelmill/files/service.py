"""Result files by id: their row and their bytes, for whoever serves or embeds them."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from pixelmill.errors import NotFound
from pixelmill.files.storage import FileStorage
from pixelmill.store.db import Database
from pixelmill.store.tables import files


@dataclass(frozen=True)
class StoredFile:
    id: str
    content_type: str
    data: bytes


class FileService:
    def __init__(self, db: Database, storage: FileStorage):
        self.db = db
        self.storage = storage

    def read(self, file_id: str) -> StoredFile:
        """The file's bytes and type; :class:`NotFound` (``file_not_found``) when its row or its bytes are gone."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(files.c.storage_key, files.c.content_type).where(files.c.id == file_id)).first()
        if row is None or not self.storage.exists(row.storage_key):
            raise NotFound("File not found", code="file_not_found")
        return StoredFile(file_id, row.content_type, self.storage.get(row.storage_key))
