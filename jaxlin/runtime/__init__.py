"""The process around a run: devices and meshes (`devices`), several processes (`distributed`), the
supervising parent of a multi-process run (`supervise`), stopping on signals (`signals`), the
persistent compilation cache (`compile_cache`), the fixed rules of how a step is compiled and run
(`dot_layout`, `chunk_form`, `cpu_convolutions`), the process's time marks (`timing`) and
`--profile`'s trace (`profiling`)."""
