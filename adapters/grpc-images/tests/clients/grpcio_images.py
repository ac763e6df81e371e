"""A grpcio client of polyhub's image service, with stubs generated from
proto/ by grpcio-tools when it runs: a client no one on this project wrote.

    grpcio_images.py TARGET TOKEN PROTO_DIR IMAGE...

Checks health (grpc.health.v1), uploads each IMAGE in 64 KiB chunks, lists
the caller's images (or says why it could not), and prints one JSON document
with what it saw.
"""

import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc


def stubs(proto_dir: str, out: pathlib.Path):
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "polyhub/images/v1/images.proto",
            "google/api/annotations.proto",
            "google/api/http.proto",
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, str(out))
    from polyhub.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402

    return images_pb2, images_pb2_grpc


def main():
    target, token, proto_dir, *paths = sys.argv[1:]
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(proto_dir, pathlib.Path(out))
        channel = grpc.insecure_channel(target)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="polyhub.images.v1.ImageDelivery"),
            timeout=10,
        )
        auth = [("authorization", f"Bearer {token}")]
        images = rpc.ImageDeliveryStub(channel)
        uploaded = []
        for path in paths:
            data = pathlib.Path(path).read_bytes()

            def requests(data=data, path=path):
                yield pb.UploadImageRequest(
                    metadata=pb.UploadMetadata(
                        filename=pathlib.Path(path).name, content_type="image/png"
                    )
                )
                for i in range(0, len(data), 64 * 1024):
                    yield pb.UploadImageRequest(chunk=data[i : i + 64 * 1024])

            image = images.UploadImage(requests(), metadata=auth, timeout=30)
            uploaded.append(
                {"id": image.id, "url": image.url, "sha256": image.sha256,
                 "content_type": image.content_type}
            )
        try:
            listed = [
                i.id
                for i in images.ListImages(
                    pb.ListImagesRequest(page_size=10), metadata=auth, timeout=10
                ).images
            ]
            list_error = None
        except grpc.RpcError as e:
            listed, list_error = [], e.code().name
        try:
            images.ListImages(pb.ListImagesRequest(), timeout=10)
            unauthenticated = None
        except grpc.RpcError as e:
            unauthenticated = e.code().name
        print(json.dumps({
            "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            "uploaded": uploaded,
            "listed": listed,
            "list_error": list_error,
            "without_token": unauthenticated,
        }))


if __name__ == "__main__":
    main()
