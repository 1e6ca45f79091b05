"""The weights cache of a ModelDeployment: download once, apart from serving.

- `render`: the cache claim and the download Job (pure), the engine's offline switch,
  the cache-size check;
- `state`: where a download stands, read from its Job, pods and progress line (pure):
  `status.cache` and the cause of a failure;
- `download`: the downloader itself (`python -m openmodel.weights.download`), run by the
  download Job in the operator's image; the one module that imports `huggingface_hub`.

The design is docs/api.md, *Weights cache*.
"""
