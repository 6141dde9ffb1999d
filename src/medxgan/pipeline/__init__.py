"""The pipeline: one function per `medxgan <step>` (steps), the command line built from them (cli), sharding."""
