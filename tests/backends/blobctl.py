#!/usr/bin/env python3
"""Talk to the S3 / Azure emulators that start_s3.sh and start_azurite.sh start.

    blobctl.py s3 create BUCKET         create the bucket (an existing one is fine)
    blobctl.py s3 smoke BUCKET          put, list, get, range-get and delete a probe object
    blobctl.py s3 list BUCKET [PREFIX]  print "size name" per object
    blobctl.py az create|smoke|list CONTAINER [PREFIX]   the same on Azurite
    blobctl.py az tiers CONTAINER [PREFIX]  print "tier name" per blob (access tiers)

Configuration comes from the environment the start scripts print: for S3,
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; for Azure,
AZURITE_BLOB_STORAGE_URL (account devstoreaccount1 with its well-known key unless
AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY say otherwise).
"""
from __future__ import annotations

import os
import sys
import uuid

# Azurite's documented development account; not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


class S3:
    def __init__(self, bucket: str):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=os.environ["AWS_ENDPOINT_URL"],
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def create(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        extra = {} if start is None else {"Range": f"bytes={start}-{end}"}
        return self.client.get_object(Bucket=self.bucket, Key=name, **extra)["Body"].read()

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        return out

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=name)


class Azure:
    def __init__(self, container: str):
        from azure.storage.blob import BlobServiceClient

        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        base = os.environ.get("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000").rstrip("/")
        conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
                f"BlobEndpoint={base}/{account};")
        self.container = BlobServiceClient.from_connection_string(conn).get_container_client(container)

    def create(self) -> None:
        from azure.core.exceptions import ResourceExistsError
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        if start is None:
            return self.container.download_blob(name).readall()
        return self.container.download_blob(name, offset=start, length=end - start + 1).readall()

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        return [(b.name, b.size) for b in self.container.list_blobs(name_starts_with=prefix or None)]

    def delete(self, name: str) -> None:
        self.container.delete_blob(name)

    def tiers(self, prefix: str = "") -> list[tuple[str, str]]:
        return [(b.name, b.blob_tier or "-")
                for b in self.container.list_blobs(name_starts_with=prefix or None)]


def smoke(store) -> None:
    prefix = f"smoke-{uuid.uuid4().hex}/"
    name = prefix + "probe.bin"
    data = bytes(range(256)) * 64
    store.put(name, data)
    assert store.list(prefix) == [(name, len(data))], store.list(prefix)
    assert store.get(name) == data
    assert store.get(name, 10, 19) == data[10:20]
    store.delete(name)
    assert store.list(prefix) == []
    print(f"smoke ok: put/list/get/range-get/delete of {len(data)} bytes")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("s3", "az") or argv[1] not in ("create", "smoke", "list", "tiers") \
            or (argv[1] == "tiers" and argv[0] != "az"):
        print(__doc__, file=sys.stderr)
        return 2
    store = (S3 if argv[0] == "s3" else Azure)(argv[2])
    if argv[1] == "create":
        store.create()
        print(f"{argv[0]}: {argv[2]} ready")
    elif argv[1] == "smoke":
        smoke(store)
    elif argv[1] == "tiers":
        for name, tier in store.tiers(argv[3] if len(argv) > 3 else ""):
            print(tier, name)
    else:
        for name, size in store.list(argv[3] if len(argv) > 3 else ""):
            print(size, name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
