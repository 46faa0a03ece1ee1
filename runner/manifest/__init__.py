"""Read and check input: YAML with positions, one manifest, many manifests, the JSON
Schema, the semantic checks, training images (and their downscaling before upload)."""
