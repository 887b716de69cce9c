"""Publishing: the committed ClimbMix dataset copied to `s3://bucket/prefix/<version>/`, and read back.

CLIMB (Diao et al., NVIDIA 2025) releases ClimbMix as training shards; here the build's dataset
is published as immutable, verified versions with a "latest" pointer (`climb publish`).

Modules:
- `publisher`: one version uploaded, verified and committed, the pointer to the latest, MLflow record;
- `upload`: one file uploaded (multipart, SHA-256 checksums) and verified;
- `s3`: the target (`publish.uri`), version names and the object reads, all retried;
- `versions`: the published versions listed and deleted (`climb retract --delete-old-versions`);
- `reader`: a ClimbMix dataset read back, every file checked against its manifest;
- `streaming`: fixed-length token windows streamed into PyTorch training.
"""
