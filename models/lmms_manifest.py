"""The `lmms_eval.models` entry point. A callable, so that loading it imports nothing from lmms-eval while
lmms-eval's own registry is being built (a module-level ModelManifest would be a circular import)."""


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="modbench", simple_class_path="modbench.models.lmms_plugin.ModbenchLmms")
