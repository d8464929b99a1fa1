"""The programs behind the make targets: they may import the runtime, the harness and the stages."""
