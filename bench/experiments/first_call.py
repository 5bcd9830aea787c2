# First execution of an AOT-compiled chunk vs later ones (XLA CPU's first-run overhead).
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/first_call.py
import os
import time, numpy as np, jax
from jaxlin.data.datasets import load_datasets
from jaxlin.config import Config
from jaxlin.models import get_model
from jaxlin.training.trainer import Trainer
d = load_datasets('mnist', os.environ['JAXLIN_DATA_DIR'])
c = Config(eval_every=100)
t = Trainer(c, d, get_model('linear'), jax.devices()[0])
st = t.init_state(); t.compile(st, [100])
s=time.perf_counter(); o=t.sampler.window(0,100); jax.block_until_ready(o[0]); print('window', time.perf_counter()-s)
s=time.perf_counter(); o=t.sampler.window(0,100); jax.block_until_ready(o[0]); print('window again', time.perf_counter()-s)
for i in range(3):
    s=time.perf_counter(); st2 = t.init_state(); jax.block_until_ready(st2); print('init', time.perf_counter()-s)
    s=time.perf_counter(); out = t._compiled[100](*st2, t.train_images_uint8, t.train_labels, *o); jax.block_until_ready(out); print('exe', time.perf_counter()-s)
