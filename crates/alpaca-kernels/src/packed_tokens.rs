//! A padded batch's real tokens packed into consecutive rows, and the moves between the two
//! layouts.
//!
//! Why: in a batch padded to its longest sentence most slots can be padding (CoNLL-2003 at
//! batch 16: 42% of the slots are tokens), and an encoder's products, norms and activations
//! work token by token, so on padding they are pure waste. Only attention needs to know which
//! tokens share a sentence; it takes the packed rows with this map (as FasterTransformer's
//! "remove padding" and ModernBERT's unpadding do). The real tokens' results are those of the
//! padded computation; padding slots come back as zeros.

use std::sync::Arc;

use candle_core::{bail, DType, Device, Result, Tensor};

/// The slot → row map of one batch: row r of a packed tensor [1, n, width] holds the token in
/// slot `slots[r]` = b·T + i of the [B, T] grid (slots ascending); padding slots have no row.
#[derive(Debug, Clone)]
pub struct PackedTokens {
    batch: usize,
    length: usize,
    /// The slot of each row, ascending.
    slots: Arc<Vec<u32>>,
    /// The row of each slot, [`NO_ROW`] for padding.
    rows_of_slots: Arc<Vec<u32>>,
}

/// Marks a padding slot in [`PackedTokens::row_of_slot`].
pub const NO_ROW: u32 = u32::MAX;

impl PackedTokens {
    /// From an attention mask [B, T] (1 = token, 0 = padding; any non-zero counts as a token).
    pub fn from_mask(mask: &Tensor) -> Result<Self> {
        let (batch, length) = mask.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "packed tokens: the attention mask must be [batch, length], got {:?}",
                mask.shape()
            ))
        })?;
        let values = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Self::from_flags(batch, length, values.iter().map(|&m| m != 0.0))
    }

    /// Every slot a token: the packed rows are the grid's slots in order.
    pub fn dense(batch: usize, length: usize) -> Result<Self> {
        Self::from_flags(batch, length, std::iter::repeat_n(true, batch * length))
    }

    fn from_flags(batch: usize, length: usize, flags: impl Iterator<Item = bool>) -> Result<Self> {
        let total = batch * length;
        if total >= NO_ROW as usize {
            bail!("packed tokens: {batch} × {length} slots do not fit a u32 index")
        }
        let mut slots = Vec::with_capacity(total);
        let mut rows_of_slots = vec![NO_ROW; total];
        for (slot, token) in flags.enumerate() {
            if token {
                rows_of_slots[slot] = slots.len() as u32;
                slots.push(slot as u32);
            }
        }
        Ok(Self {
            batch,
            length,
            slots: Arc::new(slots),
            rows_of_slots: Arc::new(rows_of_slots),
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// T, the padded length.
    pub fn length(&self) -> usize {
        self.length
    }

    /// n, the number of real tokens.
    pub fn rows(&self) -> usize {
        self.slots.len()
    }

    /// No padding at all: packing is a reshape.
    pub fn is_dense(&self) -> bool {
        self.rows() == self.batch * self.length
    }

    /// The slot of each packed row.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The packed row of `slot`, or [`NO_ROW`] for padding.
    pub fn row_of_slot(&self, slot: usize) -> u32 {
        self.rows_of_slots[slot]
    }

    /// The key mask [B·T] this packing implies: 1 for tokens, 0 for padding.
    pub fn key_mask(&self) -> Vec<f32> {
        self.rows_of_slots
            .iter()
            .map(|&row| if row == NO_ROW { 0.0 } else { 1.0 })
            .collect()
    }

    /// Each row's position in its sequence (slot mod T), [1, n] u32: BERT's position ids.
    pub fn positions(&self, device: &Device) -> Result<Tensor> {
        let length = self.length as u32;
        let positions: Vec<u32> = self.slots.iter().map(|&slot| slot % length).collect();
        Tensor::from_vec(positions, (1, self.rows()), device)
    }

    /// [B, T, …] → [1, n, …]: the real tokens' rows, in slot order (differentiable; ids too).
    pub fn pack(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[0] != self.batch || dims[1] != self.length {
            bail!(
                "packed tokens: expected [{}, {}, …], got {:?}",
                self.batch,
                self.length,
                x.shape()
            )
        }
        let mut packed = vec![1, self.rows()];
        packed.extend_from_slice(&dims[2..]);
        if self.is_dense() {
            return x.reshape(packed);
        }
        let mut flat = vec![self.batch * self.length];
        flat.extend_from_slice(&dims[2..]);
        let slots = Tensor::from_slice(&self.slots, self.rows(), x.device())?;
        x.reshape(flat)?.index_select(&slots, 0)?.reshape(packed)
    }

    /// [1, n, W] → [B, T, W] with zeros in the padding slots (differentiable).
    pub fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let (one, rows, width) = x.dims3()?;
        if one != 1 || rows != self.rows() {
            bail!(
                "packed tokens: expected [1, {}, width], got {:?}",
                self.rows(),
                x.shape()
            )
        }
        let grid = (self.batch, self.length, width);
        if self.is_dense() {
            return x.reshape(grid);
        }
        let slots = Tensor::from_slice(&self.slots, self.rows(), x.device())?;
        Tensor::zeros((self.batch * self.length, width), x.dtype(), x.device())?
            .index_add(&slots, &x.squeeze(0)?, 0)?
            .reshape(grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::gradients;
    use candle_core::Var;

    fn mask() -> Tensor {
        Tensor::new(&[[1f32, 1., 0.], [1., 0., 0.]], &Device::Cpu).unwrap()
    }

    #[test]
    fn maps_tokens_to_rows_and_back() {
        let tokens = PackedTokens::from_mask(&mask()).unwrap();
        assert_eq!(tokens.rows(), 3);
        assert!(!tokens.is_dense());
        assert_eq!(tokens.slots(), &[0, 1, 3]);
        assert_eq!(tokens.row_of_slot(3), 2);
        assert_eq!(tokens.row_of_slot(2), NO_ROW);
        assert_eq!(tokens.key_mask(), vec![1., 1., 0., 1., 0., 0.]);
        let positions = tokens.positions(&Device::Cpu).unwrap();
        assert_eq!(positions.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 0]]);

        let x = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let packed = tokens.pack(&x).unwrap();
        assert_eq!(
            packed.to_vec3::<f32>().unwrap(),
            vec![vec![vec![0., 1.], vec![2., 3.], vec![6., 7.]]]
        );
        let unpacked = tokens.unpack(&packed).unwrap();
        assert_eq!(
            unpacked.to_vec3::<f32>().unwrap(),
            vec![
                vec![vec![0., 1.], vec![2., 3.], vec![0., 0.]],
                vec![vec![6., 7.], vec![0., 0.], vec![0., 0.]]
            ]
        );
        let ids = Tensor::new(&[[5u32, 6, 0], [7, 0, 0]], &Device::Cpu).unwrap();
        assert_eq!(
            tokens.pack(&ids).unwrap().to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7]]
        );
    }

    #[test]
    fn gradients_flow_through_pack_and_unpack() {
        let tokens = PackedTokens::from_mask(&mask()).unwrap();
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 12., &Device::Cpu)
                .unwrap()
                .reshape((2, 3, 2))
                .unwrap(),
        )
        .unwrap();
        let upstream = Tensor::arange(1f32, 13., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let round_trip = tokens.unpack(&tokens.pack(&x).unwrap()).unwrap();
        let [dx] = gradients(&round_trip, &upstream, [x.as_tensor()]);
        // The upstream gradient on token slots, 0 on padding.
        let expected = upstream
            .broadcast_mul(&mask().unsqueeze(2).unwrap())
            .unwrap();
        assert_eq!(
            dx.to_vec3::<f32>().unwrap(),
            expected.to_vec3::<f32>().unwrap()
        );
    }

    #[test]
    fn dense_packing_is_a_reshape_and_bad_shapes_are_errors() {
        let tokens = PackedTokens::dense(2, 3).unwrap();
        assert!(tokens.is_dense());
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(tokens.pack(&x).unwrap().dims(), &[1, 6, 4]);
        assert!(tokens
            .pack(&Tensor::zeros((3, 2, 4), DType::F32, &Device::Cpu).unwrap())
            .is_err());
        assert!(tokens
            .unpack(&Tensor::zeros((1, 5, 4), DType::F32, &Device::Cpu).unwrap())
            .is_err());
        let flat = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
        assert!(PackedTokens::from_mask(&flat).is_err());
    }
}
