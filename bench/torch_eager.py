"""PyTorch eager, the peer most users would pick: nn.Linear (and for the CNN nn.Conv2d, nn.MaxPool2d)
layers, F.cross_entropy, torch.optim.SGD, batches indexed out of a tensor by a per-epoch `torch.randperm`.

The CNN runs in NCHW, PyTorch's natural layout (its convolutions are tuned for it), not jaxlin's NHWC: the
shared starting params are transposed to it (`cnn_layers`), so the network computes the same function."""

from __future__ import annotations

import platform
import time

import numpy as np

from bench.common import (CNN_CHANNELS, IMAGE_SIDE, NextBatch, initial_params, learning_rate,
                          thread_settings, timed, train_until)


def cnn_layers(params: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The CNN's shared params (jaxlin's layout) in PyTorch's: convolution weights HWIO -> OIHW; the dense
    layer's rows from NHWC flattening order (h, w, c) to NCHW's (c, h, w); dense weights (in, out) -> (out, in)."""
    (conv1_w, conv1_b), (conv2_w, conv2_b), (dense_w, dense_b), (out_w, out_b) = params
    side, channels = IMAGE_SIDE // 4, CNN_CHANNELS[-1]
    dense_w = dense_w.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(dense_w.shape)
    return [(conv1_w.transpose(3, 2, 0, 1), conv1_b), (conv2_w.transpose(3, 2, 0, 1), conv2_b),
            (dense_w.T, dense_b), (out_w.T, out_b)]


class TorchEager:
    framework = "torch"

    def __init__(self, data: dict):
        import torch

        self.torch, self.data = torch, data
        self.images_uint8 = torch.from_numpy(data["train_uint8"].copy())
        self.labels = torch.from_numpy(data["train_labels"].astype(np.int64))
        self.num_examples = len(data["train_labels"])

    def info(self) -> dict:
        torch = self.torch
        return {"framework": "torch", "version": torch.__version__, "device": "cpu",
                "platform": platform.platform(),
                "threads": {**thread_settings(), "torch_num_threads": torch.get_num_threads()}}

    def _net(self, model: str):
        torch = self.torch
        nn = torch.nn
        if model == "cnn":  # shapes from the arrays (OIHW, (out, in)): what they load into
            arrays = cnn_layers(initial_params("cnn"))
            layers = [nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding="same") for w, _ in arrays[:2]]
            layers += [nn.Linear(w.shape[1], w.shape[0]) for w, _ in arrays[2:]]
            net = nn.Sequential(nn.Unflatten(1, (1, IMAGE_SIDE, IMAGE_SIDE)),
                                layers[0], nn.ReLU(), nn.MaxPool2d(2), layers[1], nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), layers[2], nn.ReLU(), layers[3])
        else:
            arrays = [(w.T, b) for w, b in initial_params(model)]
            layers = [nn.Linear(w.shape[1], w.shape[0]) for w, _ in arrays]
            net = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])
        with torch.no_grad():
            for layer, (w, b) in zip(layers, arrays):
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                layer.bias.copy_(torch.from_numpy(b))
        return net, torch.optim.SGD(net.parameters(), lr=learning_rate(model))

    def _step(self, net, optimizer, indices):
        images = self.images_uint8[indices].float() / 255.0
        loss = self.torch.nn.functional.cross_entropy(net(images), self.labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def _batches(self, num_steps: int, batch_size: int):
        """The tutorial's next_batch (`bench.common.NextBatch`) over torch.randperm epochs."""
        torch, generator = self.torch, self.torch.Generator().manual_seed(0)
        next_batch = NextBatch(self.num_examples, permutation=lambda: torch.randperm(self.num_examples,
                                                                                     generator=generator),
                               concatenate=torch.cat)
        for _ in range(num_steps):
            yield next_batch(batch_size)

    def setup(self, model: str, batch_size: int, num_steps: int) -> dict:
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        first_call, _ = timed(self.run)
        warm_up, _ = timed(self.run)
        return {"compile_seconds": 0.0, "warm_up_seconds": warm_up, "first_call_seconds": first_call}

    def run(self) -> dict:
        net, optimizer = self._net(self.model)
        start = time.perf_counter()
        for indices in self._batches(self.num_steps, self.batch_size):
            loss = self._step(net, optimizer, indices)
        loss = loss.item()
        return {"seconds": time.perf_counter() - start, "loss": loss}

    def time_to_accuracy(self, model: str, batch_size: int, eval_every: int, max_steps: int,
                         target: float, order_file: str) -> dict:
        torch = self.torch
        net, optimizer = self._net(model)
        order = torch.from_numpy(np.load(order_file).astype(np.int64))
        test_images = torch.from_numpy(self.data["test_images"])
        test_labels = torch.from_numpy(self.data["test_labels"].astype(np.int64))

        def train_steps(start, count):
            for indices in order[start:start + count]:
                self._step(net, optimizer, indices)

        def accuracy():
            with torch.no_grad():
                return int((net(test_images).argmax(dim=1) == test_labels).sum()) / len(test_labels)

        return train_until(train_steps, accuracy, eval_every, max_steps, target)
