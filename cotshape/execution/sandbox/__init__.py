"""The sandbox for model-written code (MBPP): ``api`` is the public API, ``server`` the fork
server that runs inside the sandbox; docs/sandbox.md describes what is isolated and how."""
