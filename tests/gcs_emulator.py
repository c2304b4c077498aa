"""An in-memory Google Cloud Storage server on 127.0.0.1 for gs:// tests: `python gcs_emulator.py PORT`.

gcp-storage-emulator speaks the JSON API that gcsfs (etils.epath) and tensorstore (Orbax) use; its
media downloads lack the x-goog-generation header, from which tensorstore reads an object's
generation, so this adds it. Prints "ready" once it serves.
"""

import sys
import time

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:  # the handler answers 404
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation  # before the server module binds its routes

if __name__ == "__main__":
  from gcp_storage_emulator.server import create_server

  server = create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket="bucket")
  server.start()
  print("ready", flush=True)
  while True:
    time.sleep(3600)
