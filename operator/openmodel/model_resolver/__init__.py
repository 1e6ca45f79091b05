"""Reading a model's own config.json (and safetensors index) so sizing knows any model.

- `state`: where one model's resolution stands (pending, resolved, failed);
- `settings`: the platform config key `modelResolver` (endpoint, token file, timeouts);
- `hub`: the Hugging Face Hub's HTTP API through aiohttp, honouring HF_ENDPOINT;
- `local`: a local model directory or config.json path (the CLI);
- `store`: the operator's in-memory cache by repo and revision, with back-off;
- `loop`: the background task that resolves what the reconciler asked for, then
  reconciles the ModelDeployments that waited.
The reconcile never waits on the network: it reads the store and reports
`SizingPending` until the answer is there.
"""
