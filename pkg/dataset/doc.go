// Package dataset turns images users already have into Gantry's training format and streams
// it back to workers.
//
// # Import
//
// Create reads one source (a folder of images searched recursively, a zip of images, or an
// IDX image file such as MNIST or Fashion-MNIST, gzip or not), brings every image to one
// shape and writes shards plus a manifest to a store (package store). Per image, in order:
//
//  1. The header is read first; images larger than MaxPixels are refused before decoding.
//  2. Channels follow the policy: keep (the widest mode among the inputs), gray, rgb or rgba.
//     Alpha is composited onto Background when the output has none.
//  3. Non-square images are centre-cropped or centre-padded (with Background) to a square.
//  4. The square is resampled to Resolution with the chosen filter, or, with filter "none",
//     centre-padded or cropped to Resolution without resampling (bit-exact import).
//  5. Levels of detail are computed from the 8-bit image down to 4x4 with a 2x2 box filter,
//     each level from the exact mean of the full-resolution pixels it covers, rounded half to
//     even: the same numbers StyleGAN's dataset tool gets by averaging float levels.
//
// Every input that is skipped, refused or changed by a policy gets a line saying which file,
// what and why; a summary of counts ends the run and is kept in the manifest.
//
// # Shard format (version 1)
//
// A shard holds Count images at every level. All integers are little-endian.
//
//	offset  size  field
//	0       8     magic "GANTRYDS"
//	8       4     version (1)
//	12      4     count: images in this shard (1..1<<24)
//	16      4     resolution R: a power of two, 4..16384
//	20      4     channels C: 1, 3 or 4
//	24      4     flags: bit 0 set when labels follow
//	28      8     first: dataset index of the shard's first image
//	36      4*count  labels as int32 (only when flag bit 0 is set)
//	...     levels, full resolution first: level l holds count images of C x (R>>l) x (R>>l)
//	        bytes each, channel-planar (CHW), rows top to bottom, down to 4x4
//	end-4   4     CRC-32C (Castagnoli) of every byte before it
//
// # Manifest
//
// manifest.json (see Manifest) is written last. Its presence is what makes a dataset
// complete: it lists every shard with its size and SHA-256, the shape, labels, the source and
// options used and the import summary. While Create runs it records each finished shard under
// partial/ so that a rerun with the same options resumes after the last finished shard; the
// partial records are deleted once the manifest is written.
//
// # Loading
//
// Loader streams minibatches to a worker from the shards it was given: float32 NCHW in
// [-1, 1] at a chosen level of detail, shuffled deterministically from a seed and the epoch,
// optionally mirrored, prefetched in the background, with shards cached on local disk. Its
// Cursor (epoch, position) goes into checkpoints and restores the exact stream.
package dataset
