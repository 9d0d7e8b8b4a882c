"""Running untrusted code: the guarded verifier pool and the sandbox."""
