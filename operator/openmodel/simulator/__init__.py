"""A simulated vLLM / TGI engine for tests, benchmarks and the end-to-end cluster.

Library use (many simulators in one process, one per fake pod IP)::

    from openmodel.simulator import start_simulator
    handle = await start_simulator("tgi", "127.0.0.2", 8000, slots=4, service_time=0.2,
                                   model="mistralai/Mistral-7B-Instruct-v0.3")
    ...
    await handle.stop(drain_seconds=30)  # as vLLM with --shutdown-timeout 30 on SIGTERM

Command line::

    python -m openmodel.simulator --engine vllm --host 127.0.0.1 --port 8000 \\
        --slots 4 --service-time 0.5 --model meta-llama/Llama-3.1-8B-Instruct --shutdown-timeout 30

``--task embed`` or ``--task rerank`` (``task=`` in the library) makes it a pooling
model: an embedding model or a cross-encoder, as vLLM serves them (``pooling``).

See ``server`` for the endpoints, the queueing model, streams and the drain,
``openai_bodies`` for the response bodies (vLLM 0.32 exactly), ``exposition`` for the
/metrics formats.
"""

from openmodel.simulator.exposition import EngineStats
from openmodel.simulator.server import ENGINES, SimulatorHandle, build_app, start_simulator

__all__ = ["ENGINES", "EngineStats", "SimulatorHandle", "build_app", "start_simulator"]
