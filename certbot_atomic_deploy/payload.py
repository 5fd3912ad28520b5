"""What a target receives from a lineage, one payload type per kind of format.

Imports no certbot; cryptography only when a keystore is actually built.

A payload answers two questions for the deploy run: is the destination
already what this lineage would make it (then nothing is written or
reloaded), and what exactly to write (a :class:`~.publish.NewFile` per name).

- :class:`TextPayload`, the PEM formats: the bytes are a function of the
  lineage, so "in place" means the destination holds exactly these bytes,
  owner and mode;
- :class:`KeystorePayload`, PKCS#12: every build draws a fresh salt and IV, so
  "in place" means the state records a build from the same inputs (key, chain,
  password, format: :func:`~.pem.keystore_fingerprint`) and the file on disk
  is still the one recorded (its sha256), with its owner and mode.
"""
from __future__ import annotations

import hashlib
import os
from typing import Union

from certbot_atomic_deploy.config import FileOutput, Target, read_password
from certbot_atomic_deploy.pem import KEYSTORE_FORMAT, Material, build, keystore_fingerprint
from certbot_atomic_deploy.publish import (
    NewFile,
    directory_in_place,
    file_in_place,
    read_file_if_exact,
)
from certbot_atomic_deploy.state import Record


class TextPayload:
    def __init__(self, target: Target, material: Material) -> None:
        self.target = target
        self.files = {name: NewFile(build(fmt, material), target.key.uid, target.key.gid,
                                    target.mode_of(fmt))
                      for name, fmt in target.output.files().items()}

    def in_place(self, current: Record | None) -> bool:
        output = self.target.output
        if isinstance(output, FileOutput):
            return file_in_place(output.path, self.files[os.path.basename(output.path)])
        return directory_in_place(output.directory, self.files)

    def build(self) -> dict[str, NewFile]:
        return self.files

    def stamp(self, record: Record) -> Record:
        """The record of a publish, with what this payload adds to it (nothing)."""
        return record


class KeystorePayload:
    def __init__(self, target: Target, output: FileOutput, material: Material) -> None:
        self.target = target
        self.output = output
        self.material = material
        self.password = read_password(target.name, output.password_file or "")
        self.source = keystore_fingerprint(material, self.password)
        self._built: NewFile | None = None

    def in_place(self, current: Record | None) -> bool:
        if current is None or current.source != self.source or current.digest is None:
            return False
        key = self.target.key
        data = read_file_if_exact(self.output.path, key.uid, key.gid,
                                  self.target.mode_of(KEYSTORE_FORMAT))
        return data is not None and hashlib.sha256(data).hexdigest() == current.digest

    def build(self) -> dict[str, NewFile]:
        if self._built is None:
            from certbot_atomic_deploy.pkcs12 import keystore
            key = self.target.key
            self._built = NewFile(keystore(self.material, self.password), key.uid, key.gid,
                                  self.target.mode_of(KEYSTORE_FORMAT))
        return {os.path.basename(self.output.path): self._built}

    def stamp(self, record: Record) -> Record:
        """The record of a publish, with the fingerprint and digest of the keystore."""
        data = next(iter(self.build().values())).data
        return record._replace(source=self.source, digest=hashlib.sha256(data).hexdigest())


Payload = Union[TextPayload, KeystorePayload]


def payload_for(target: Target, material: Material) -> Payload:
    """The payload of ``material`` for ``target``. Raises ConfigError for a bad password
    file."""
    output = target.output
    if isinstance(output, FileOutput) and output.format == KEYSTORE_FORMAT:
        return KeystorePayload(target, output, material)
    return TextPayload(target, material)
