"""Fake of modules/shared_items.py (1.10.1): reload_hypernetworks() and the class swap that makes
modules.shared.sd_model a property.

Real: reading shared.sd_model returns sd_models.model_data.get_sd_model(), which LOADS the selected
checkpoint if none was loaded yet; setting it calls model_data.set_sd_model(). The fake keeps that
shape but never loads a file: see sd_models.load_model (it records the request).
"""
import sys

from modules.shared_cmd_options import cmd_opts

reload_hypernetworks_calls = 0


def reload_hypernetworks():
    from modules import shared
    from modules.hypernetworks import hypernetwork
    global reload_hypernetworks_calls
    reload_hypernetworks_calls += 1
    shared.hypernetworks = hypernetwork.list_hypernetworks(cmd_opts.hypernetwork_dir)


class Shared(sys.modules['modules.shared'].__class__):
    @property
    def sd_model(self):
        import modules.sd_models
        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models
        modules.sd_models.model_data.set_sd_model(value)


sys.modules['modules.shared'].__class__ = Shared
