//! A worker's room-membership index: for each room, the slab keys of the
//! open connections in it. Add and remove are O(1): each connection records
//! its slot, and removal swaps the last member into the hole.

pub struct RoomIndex {
    /// `members[room]`; index 0 is unused (rooms start at 1).
    members: Vec<Vec<usize>>,
}

impl RoomIndex {
    pub fn new(rooms: u32) -> Self {
        RoomIndex {
            members: (0..=rooms).map(|_| Vec::new()).collect(),
        }
    }

    /// Adds `key` to `room`; returns its slot.
    pub fn join(&mut self, room: u32, key: usize) -> usize {
        let list = &mut self.members[room as usize];
        list.push(key);
        list.len() - 1
    }

    /// Removes the member at `slot` of `room`. Returns the key that moved
    /// into `slot` (its owner must record the new slot), if any.
    pub fn leave(&mut self, room: u32, slot: usize) -> Option<usize> {
        let list = &mut self.members[room as usize];
        list.swap_remove(slot);
        list.get(slot).copied()
    }

    pub fn members(&self, room: u32) -> &[usize] {
        self.members
            .get(room as usize)
            .map_or(&[], |m| m.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave_keep_slots_consistent() {
        let mut index = RoomIndex::new(3);
        assert_eq!(index.join(2, 10), 0);
        assert_eq!(index.join(2, 11), 1);
        assert_eq!(index.join(2, 12), 2);
        // Removing slot 0 moves the last member (12) into it.
        assert_eq!(index.leave(2, 0), Some(12));
        assert_eq!(index.members(2), &[12, 11]);
        // Removing the last slot moves nothing.
        assert_eq!(index.leave(2, 1), None);
        assert_eq!(index.members(2), &[12]);
        assert!(index.members(1).is_empty());
        assert!(index.members(99).is_empty());
    }
}
