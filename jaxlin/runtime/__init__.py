"""The process around a run: devices and meshes (`devices`), several processes (`distributed`), the
supervising parent of a multi-process run (`supervise`), stopping on signals (`signals`), the
persistent compilation cache (`compile_cache`), the dot-layout rule (`dot_layout`) and the
process's time marks (`timing`)."""
