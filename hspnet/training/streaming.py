"""Training from a stream (`hspnet train --streaming true`): the training split of a sharded dataset
(:mod:`hspnet.data.shards`) read with `datasets`' streaming, never materialised, and resumed mid-epoch exactly.

How an epoch is read (each process, the same on every launch, with any `--num_workers`):

1. the split is opened as a `datasets.IterableDataset` (one shard per Parquet file), shuffled with
   `.shuffle(seed, buffer_size=--shuffle_buffer)` and split with `split_dataset_by_node(rank, world_size)`: every
   process reads whole shards of its own, disjoint from the others' (the number of shards must be a multiple of the
   number of processes); `set_epoch(epoch)` reshuffles the shards (and so their assignment to processes) and the
   buffer for each epoch, deterministically;
2. each process takes exactly ceil(rows / processes) rows per epoch: a process whose shards hold fewer starts its
   stream of the epoch again from the beginning (as accelerate's `even_batches` repeats the first samples), one whose
   shards hold more leaves its last ones out for that epoch. So every process runs the same number of steps
   (ceil(rows per process / batch_size), the last batch smaller), known before reading a row (the number of rows is
   recorded in the dataset's `hspnet_build.json`), which the LR schedule and the epoch loop need. With one process an
   epoch is every image once, as in the map-style path;
3. the rows are read and batched in the main process (:class:`StreamedBatches`, cheap: the images stay compressed
   bytes), and each batch is decoded and transformed (the one transform of :mod:`hspnet.data.batches`) by a
   `torch.utils.data.DataLoader` whose "indices" are those batches of rows (:class:`DecodeRows`): with
   `--num_workers N`, N processes decode batches in turn and the loader returns them in order. The order of the
   batches does not depend on N (a stream split over loader workers, datasets' own way, would interleave each worker's
   shards and change the order with N), and the loader workers read no shard (only the main process does).

Resuming mid-epoch, exactly: the checkpoint records the data position (`"data"` in `training_state.json`: the epoch,
the batches of it consumed, and what the stream was: rows, shards, processes, shuffle); the resumed run reads the
same epoch's stream again and skips the consumed batches' rows BEFORE decoding them (the skipped rows are read, not
decoded). The stream of an epoch is a function of (seed, epoch, shuffle buffer, shards, rank, world size) only, so
the resumed run trains on exactly the batches the uninterrupted run would have, bit for bit. datasets'
`IterableDataset.state_dict()` is not used: "examples from shuffle buffers are lost when resuming and the buffers
are refilled with new data" (its docstring, datasets 5.2; `BufferShuffledExamplesIterable.load_state_dict` warns
so), so a shuffled stream would continue with other batches; and a stateful data loader (accelerate's
`use_stateful_dataloader`) needs `torchdata`, which this project does not depend on.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch

from hspnet.data.batches import collate

logger = logging.getLogger("hspnet.train")


def rows_per_process(num_rows: int, world_size: int) -> int:
    """The rows each of `world_size` processes reads per epoch of a streamed split: ceil(rows / processes)."""
    return math.ceil(num_rows / world_size)


def node_stream(split, seed: int, shuffle_buffer: int, rank: int, world_size: int):
    """The `datasets.IterableDataset` one process reads: `split` (a :class:`hspnet.data.shards.StreamedSplit`)
    shuffled with a buffer and split by node into whole shards. ``ValueError`` if the shards cannot be shared
    evenly (each process must read whole shards of its own: then no process reads another's rows)."""
    from datasets.distributed import split_dataset_by_node

    if split.num_shards % world_size:
        multiple = world_size * math.ceil(split.num_shards / world_size)
        raise ValueError(f"the streamed training split has {split.num_shards} shard(s), which {world_size} processes "
                         "cannot share evenly (each reads whole shards of its own): prepare it with --shards a "
                         f"multiple of {world_size} (e.g. {multiple})")
    stream = split.open().shuffle(seed=seed, buffer_size=shuffle_buffer)
    return split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream


class StreamedBatches:
    """The batch sampler of a streamed epoch: lists of undecoded rows (dicts of one row), read from `stream` (one
    process's `IterableDataset`), exactly `quota` rows per epoch in batches of `batch_size` (module docstring, 2.),
    the first `skip` batches left out without being decoded. `set_epoch` chooses the epoch; `skip` applies to the
    next iteration only."""

    def __init__(self, stream, quota: int, batch_size: int, rank: int = 0):
        self.stream, self.quota, self.batch_size, self.rank = stream, quota, batch_size, rank
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return math.ceil(self.quota / self.batch_size)

    def rows(self):
        """This process's `quota` rows of the epoch: its stream, started again from the beginning if it ends first."""
        self.stream.set_epoch(self.epoch)
        taken = 0
        while taken < self.quota:
            read = 0
            for row in self.stream:
                if taken == self.quota:
                    return
                read += 1
                taken += 1
                yield row
            if read == 0:
                raise ValueError(f"process {self.rank} reads no rows from its shards in epoch {self.epoch} (empty "
                                 "shards?); prepare the dataset again with hspnet prepare --shards")

    def __iter__(self):
        skip, self.skip = self.skip, 0
        rows = itertools.islice(self.rows(), skip * self.batch_size, None)
        while batch := list(itertools.islice(rows, self.batch_size)):
            yield batch


class DecodeRows(torch.utils.data.Dataset):
    """A "dataset" whose indices are batches of undecoded rows: `__getitems__(rows)` decodes and transforms them
    (`transform`, :func:`hspnet.data.batches.make_transform`) into one batch, in a loader worker or in the main
    process."""

    def __init__(self, transform):
        self.transform = transform

    def __getitems__(self, rows: list[dict]) -> dict:
        return self.transform({key: [row[key] for row in rows] for key in rows[0]})

    def __getitem__(self, rows):
        return self.__getitems__(rows)


def _as_is(batch):
    """The loader's collate function: :class:`DecodeRows` returns whole batches."""
    return batch


class StreamedLoader:
    """What the training loop iterates in a streamed run, in place of a prepared `DataLoader`: `len` (steps per
    epoch), `set_epoch`, iteration (batches on `device`) and the data position for the checkpoint
    (:meth:`position`, :meth:`load_position`). Not a `DataLoader`: `accelerator.prepare` leaves it as it is (its
    batches are this process's already)."""

    def __init__(self, batches: StreamedBatches, transform, *, num_workers: int, device, description: dict):
        from torch.utils.data import DataLoader

        self.batches, self.device, self.description = batches, device, description
        # a generator of its own: a new iterator (a resume) draws nothing from the global random state
        self.loader = DataLoader(DecodeRows(transform), batch_sampler=batches, collate_fn=_as_is,
                                 num_workers=num_workers, generator=torch.Generator().manual_seed(0),
                                 pin_memory=getattr(device, "type", "cpu") == "cuda")
        self.consumed, self.expected = 0, None

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.epoch = epoch

    def skipping(self, count: int) -> "StreamedLoader":
        """The loader for an epoch that starts after `count` batches (a resume): they are read, not decoded. On the
        first epoch after :meth:`load_position`, `count` must be the checkpoint's position."""
        if self.expected is not None:
            epoch, consumed = self.expected
            if epoch * len(self) + consumed != self.batches.epoch * len(self) + count:
                raise ValueError(f"the checkpoint's data position (epoch {epoch}, {consumed} batches) is not the "
                                 f"resumed step's (epoch {self.batches.epoch}, {count} batches)")
            self.expected = None
        self.batches.skip = count
        return self

    def __iter__(self):
        from accelerate.utils import send_to_device

        self.consumed = self.batches.skip
        for batch in self.loader:
            self.consumed += 1  # counted when handed out: a checkpoint saved after this step records it
            yield send_to_device(batch, self.device)

    def position(self) -> dict:
        """The data position: the epoch, the batches of it consumed, and what the stream is."""
        return {"kind": "stream", "epoch": self.batches.epoch, "batches": self.consumed,
                "steps_per_epoch": len(self), **self.description}

    def load_position(self, position: dict | None, path: str) -> None:
        """Check the checkpoint's data position (read from `path`) against this stream; the next :meth:`skipping`
        checks the step."""
        if not isinstance(position, dict) or position.get("kind") != "stream":
            raise ValueError(f"{path}: holds no data position of a streamed run; resume it with the options of its run")
        mine = dict(self.description, steps_per_epoch=len(self))
        different = [f"{key} {position.get(key)!r} -> {value!r}" for key, value in mine.items()
                     if position.get(key) != value]
        if different:
            raise ValueError(f"{path}: the checkpoint's stream differs from this run's ({'; '.join(different)})")
        if not all(isinstance(position.get(key), int) for key in ("epoch", "batches")):
            raise ValueError(f"{path}: malformed data position {position!r}")
        self.expected = (position["epoch"], position["batches"])


def train_loader(config, train_set, transform, accelerator):
    """The training loader: a shuffled `DataLoader` over a map-style split, or a :class:`StreamedLoader` over a
    :class:`hspnet.data.shards.StreamedSplit` (`--streaming true`)."""
    from torch.utils.data import DataLoader

    if not getattr(train_set, "streamed", False):
        return DataLoader(train_set.with_transform(transform), batch_size=config.batch_size, shuffle=True,
                          collate_fn=collate, num_workers=config.num_workers)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    stream = node_stream(train_set, config.seed, config.shuffle_buffer, rank, world_size)
    quota = rows_per_process(len(train_set), world_size)
    batches = StreamedBatches(stream, quota, config.batch_size, rank)
    description = {"num_rows": len(train_set), "num_shards": train_set.num_shards, "world_size": world_size,
                   "rows_per_process": quota, "seed": config.seed, "shuffle_buffer": config.shuffle_buffer}
    logger.info("streaming %d training images from %d shards (%d per process), shuffle buffer %d: %d rows and %d "
                "steps per process and epoch", len(train_set), train_set.num_shards,
                train_set.num_shards // world_size, config.shuffle_buffer, quota, len(batches))
    return StreamedLoader(batches, transform, num_workers=config.num_workers, device=accelerator.device,
                          description=description)


def skip_batches(accelerator, loader, count: int):
    """`loader` for an epoch resumed after `count` batches: a streamed one skips them before decoding, a prepared
    `DataLoader` through `accelerator.skip_first_batches`."""
    if isinstance(loader, StreamedLoader):
        return loader.skipping(count)
    return accelerator.skip_first_batches(loader, count) if count else loader
