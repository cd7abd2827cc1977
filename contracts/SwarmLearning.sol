// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title SwarmLearning
/// @notice Membership, per-round commitments and the on-chain weighted average of
/// CKKS ciphertexts for the Apiary hospital swarm.
/// @dev A ciphertext block is 2·N coefficients modulo one prime q, shipped as big-endian
/// u64 (four per 32-byte word). CKKS is linear in those coefficients, so
/// Σ wᵢ·ctᵢ mod q, computed coefficient-wise, decrypts to Σ wᵢ·xᵢ. The contract never
/// sees a key; it checks each ciphertext against the digest its member committed,
/// computes the sum and emits it. The Python reference of the same arithmetic is
/// `apiary.core.coefficients` (weighted_sum, weights_from_sample_counts).
///
/// A round runs in two steps so that members can mask their ciphertexts: first each member
/// enrols with its sample count and key epoch; once every active member enrolled, or the
/// enrolment window passed with at least `minPeers`, the round's participants and their
/// weights are fixed (attempt 1). Each participant then adds a pairwise mask that cancels
/// only in the weighted sum over exactly those participants (`apiary.core.masking`), and
/// commits the masked blocks' digests. When a participant has not committed by the end of
/// the commit window, `dropAbsent` starts a new attempt with the participants that did;
/// they re-mask for the smaller set and commit again, so no mask is ever revealed.
contract SwarmLearning {
    /// @notice Upper bound of Σ wᵢ; keeps |Σ wᵢ·xᵢ| far below q / (2·scale).
    uint256 public constant MAX_WEIGHT_SUM = 1024;
    /// @notice Most active members at once (bounds the per-coefficient accumulators).
    uint256 public constant MAX_MEMBERS = 64;
    /// @notice Largest dataset size a member may register (and so enrol with).
    uint256 public constant MAX_SAMPLE_COUNT = 2 ** 32 - 1;
    /// @notice Largest TLS certificate (PEM bytes) a member may register.
    uint256 public constant MAX_CERTIFICATE_BYTES = 4096;

    uint256 private constant _LANE_MASK =
        0x0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff;
    uint256 private constant _SLOT_MASK = 0xffffffffffffffffffffffffffffffff;

    /// @notice Who admits new members: the admin alone, or a majority of active members.
    enum MembershipRule {
        Admin,
        Majority
    }

    /// @notice A candidate proposed under the Majority rule, with what it is admitted with.
    struct Proposal {
        string endpoint;
        bytes32 x25519PublicKey;
        bytes tlsCertificate;
        uint256 datasetSize;
        uint256 approvals;
        uint256 epoch;
    }

    struct KeyEpoch {
        uint256 fromRound;
        bytes32 contextDigest;
    }

    /// @notice A member's record: where peers reach it, the X25519 key its secrets are
    /// wrapped to and its pairwise masks derive from, and the self-signed TLS certificate
    /// (PEM) every member's gRPC trusts while it is active, and the dataset size approved at
    /// admission: the most samples it may enrol with, so no member outweighs what it holds.
    struct Member {
        string endpoint;
        bytes32 x25519PublicKey;
        bytes tlsCertificate;
        uint256 datasetSize;
        bool active;
        bool exists;
    }

    struct Round {
        address[] enrolled;
        address[] participants;
        uint256 openedAt;
        uint256 attempt;
        uint256 attemptStartedAt;
        uint256 keyEpochPlusOne;
        uint256 totalSamples;
        uint256 commitCount;
        uint256 aggregatedBlocks;
        bool isSealed;
        bool isFinalized;
        mapping(address => uint256) sampleCounts;
        mapping(address => uint256) committedAttempt;
        mapping(address => bytes32[]) digests;
        mapping(bytes32 => address) committedBy;
        mapping(uint256 => bytes32) aggregateDigests;
    }

    /// @notice CKKS polynomial modulus degree N.
    uint256 public immutable polyModulusDegree;
    /// @notice The ciphertext coefficient modulus q (one data prime, < 2^64).
    uint256 public immutable modulus;
    /// @notice Plaintext slots per ciphertext block (N / 2).
    uint256 public immutable slotsPerBlock;
    /// @notice Parameters of the model every member trains.
    uint256 public immutable paramCount;
    /// @notice ceil(paramCount / slotsPerBlock).
    uint256 public immutable blockCount;
    /// @notice Bytes of one ciphertext block: 2·N coefficients of 8 bytes.
    uint256 public immutable blockBytes;
    /// @notice Fewest contributors a round may be aggregated with.
    uint256 public immutable minPeers;
    /// @notice Seconds after a round opens during which every active member may enrol;
    /// after it, the participants may be fixed with the enrolled members (≥ minPeers).
    uint256 public immutable enrolWindow;
    /// @notice Seconds a fixed set of participants has to commit; after it, the absent ones
    /// may be dropped and the rest re-mask for a new attempt.
    uint256 public immutable commitWindow;

    /// @notice How new members are admitted (fixed at deployment).
    MembershipRule public immutable membershipRule;
    /// @notice keccak256 of the swarm-wide training configuration (canonical JSON: the task's
    /// name, version, architecture and initial weights, and the hyper-parameters), fixed at
    /// founding; every member checks its own against it before it takes part.
    bytes32 public immutable trainingDigest;

    /// @notice The account that adds and removes members.
    address public admin;
    /// @notice The account an admin transfer was started to (zero: none pending).
    address public pendingAdmin;
    /// @notice The round that accepts commits and aggregates now (starts at 1).
    uint256 public currentRound;
    /// @notice The last round whose every block is aggregated (0: none yet).
    uint256 public lastFinalizedRound;
    /// @notice Active members right now.
    uint256 public activeMemberCount;

    address[] private _memberList;
    mapping(address => Member) private _members;
    mapping(uint256 => Round) private _rounds;
    mapping(address => Proposal) private _proposals;
    mapping(bytes32 => bool) private _approvedBy;
    uint256 private _proposalEpoch;
    KeyEpoch[] private _keyEpochs;

    event MemberAdded(
        address indexed member, string endpoint, bytes32 x25519PublicKey, uint256 datasetSize
    );
    event MemberRemoved(address indexed member, uint256 keyEpoch, uint256 fromRound);
    event AdminTransferStarted(address indexed previousAdmin, address indexed newAdmin);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event MemberProposed(address indexed candidate, address indexed proposer);
    event MemberApproved(address indexed candidate, address indexed approver, uint256 approvals);
    event KeyRotated(uint256 indexed epoch, uint256 fromRound, bytes32 contextDigest);
    event Enrolled(uint256 indexed round, address indexed member, uint256 sampleCount);
    event ParticipantsFixed(uint256 indexed round, uint256 attempt, address[] participants);
    event Committed(uint256 indexed round, address indexed member, uint256 attempt);
    event ParticipantsDropped(uint256 indexed round, uint256 attempt, address[] dropped);
    event RoundAbandoned(uint256 indexed round, uint256 participants);
    event RoundSealed(uint256 indexed round, uint256 contributors, uint256 weightSum);
    event BlockAggregated(
        uint256 indexed round,
        uint256 indexed blockIndex,
        uint256 weightSum,
        bytes32 digest,
        bytes coefficients
    );
    event RoundFinalized(uint256 indexed round, uint256 weightSum, bytes32 aggregateRoot);

    error InvalidParameters();
    error NotAdmin(address caller);
    error NotMember(address account);
    error MemberExists(address account);
    error InvalidMember(address account);
    /// @notice `account`'s TLS certificate is empty or longer than MAX_CERTIFICATE_BYTES.
    error InvalidCertificate(address account, uint256 length);
    error TooManyMembers(uint256 limit);
    error RoundNotOpen(uint256 round, uint256 currentRound);
    error RoundSealedAlready(uint256 round);
    error AlreadyCommitted(uint256 round, address member);
    error AlreadyEnrolled(uint256 round, address member);
    error NotParticipant(uint256 round, address account);
    error ParticipantsNotFixed(uint256 round);
    error ParticipantsFixedAlready(uint256 round, uint256 attempt);
    error WrongAttempt(uint256 got, uint256 expected);
    error WrongKeyEpoch(uint256 got, uint256 expected);
    error WindowOpen(uint256 round, uint256 closesAt);
    error NobodyAbsent(uint256 round, uint256 attempt);
    error NotPendingAdmin(address caller);
    error WrongBlockCount(uint256 got, uint256 expected);
    error InvalidSampleCount(uint256 got);
    error SampleCountAboveDataset(uint256 got, uint256 datasetSize);
    error DuplicateCommitment(uint256 round, address owner);
    error NothingCommitted(uint256 round);
    error NotEnoughContributors(uint256 have, uint256 need);
    error BlockOutOfRange(uint256 blockIndex, uint256 blockCount);
    error BlockAlreadyAggregated(uint256 round, uint256 blockIndex);
    error WrongContributionCount(uint256 got, uint256 expected);
    error WrongCiphertextLength(uint256 index, uint256 got, uint256 expected);
    error DigestMismatch(uint256 index, address member);
    error WrongMembershipRule(MembershipRule rule);
    error NoProposal(address candidate);
    error AlreadyApproved(address candidate, address approver);
    error InvalidKeyEpoch(uint256 fromRound, uint256 earliest);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    modifier onlyActiveMember() {
        if (!_members[msg.sender].active) revert NotMember(msg.sender);
        _;
    }

    modifier onlyCurrentRound(uint256 round) {
        if (round != currentRound) revert RoundNotOpen(round, currentRound);
        _;
    }

    /// @param polyModulusDegree_ CKKS N (a power of two).
    /// @param modulus_ the data prime q, below 2^64.
    /// @param paramCount_ parameters of the swarm's model.
    /// @param minPeers_ fewest contributors per round.
    /// @param rule_ how later members are admitted.
    /// @param contextDigest_ keccak256 of the swarm's first public HE context (key epoch 0).
    /// @param enrolWindow_ seconds every active member has to enrol in a round.
    /// @param commitWindow_ seconds the participants of an attempt have to commit.
    /// @param trainingDigest_ keccak256 of the swarm-wide training configuration.
    constructor(
        uint256 polyModulusDegree_,
        uint256 modulus_,
        uint256 paramCount_,
        uint256 minPeers_,
        MembershipRule rule_,
        bytes32 contextDigest_,
        uint256 enrolWindow_,
        uint256 commitWindow_,
        bytes32 trainingDigest_
    ) {
        if (
            polyModulusDegree_ < 2 || polyModulusDegree_ & (polyModulusDegree_ - 1) != 0
                || modulus_ < 2 || modulus_ >= 2 ** 64 || paramCount_ == 0 || minPeers_ == 0
                || minPeers_ > MAX_MEMBERS || contextDigest_ == bytes32(0) || enrolWindow_ == 0
                || commitWindow_ == 0 || enrolWindow_ > 1 days || commitWindow_ > 1 days
                || trainingDigest_ == bytes32(0)
        ) revert InvalidParameters();
        trainingDigest = trainingDigest_;
        enrolWindow = enrolWindow_;
        commitWindow = commitWindow_;
        membershipRule = rule_;
        _keyEpochs.push(KeyEpoch(1, contextDigest_));
        polyModulusDegree = polyModulusDegree_;
        modulus = modulus_;
        slotsPerBlock = polyModulusDegree_ / 2;
        paramCount = paramCount_;
        blockCount = (paramCount_ + polyModulusDegree_ / 2 - 1) / (polyModulusDegree_ / 2);
        blockBytes = polyModulusDegree_ * 2 * 8;
        minPeers = minPeers_;
        admin = msg.sender;
        currentRound = 1;
        _rounds[1].openedAt = block.timestamp;
    }

    // ------------------------------------------------------------------ admin

    /// @notice Start handing the admin role to `newAdmin`; it becomes admin when it accepts.
    /// @dev Two steps, as OpenZeppelin's Ownable2Step: a mistyped address cannot take the
    /// role, and the current admin keeps it until then. A zero address cancels.
    function transferAdmin(address newAdmin) external onlyAdmin {
        pendingAdmin = newAdmin;
        emit AdminTransferStarted(admin, newAdmin);
    }

    /// @notice The pending admin takes the role; the previous admin loses it.
    function acceptAdmin() external {
        if (msg.sender != pendingAdmin || msg.sender == address(0)) {
            revert NotPendingAdmin(msg.sender);
        }
        emit AdminTransferred(admin, msg.sender);
        admin = msg.sender;
        pendingAdmin = address(0);
    }

    // ------------------------------------------------------------------ membership

    /// @notice Admit `account` with its gRPC endpoint, X25519 public key, TLS certificate
    /// and dataset size. Under the Majority rule the admin may do so only while founding (before
    /// any member enrolled).
    /// @param account the member's Ethereum account.
    /// @param endpoint its gRPC endpoint, host:port.
    /// @param x25519PublicKey its X25519 public key.
    /// @param tlsCertificate the PEM of the self-signed certificate its node made.
    /// @param datasetSize the training samples it holds: the most it may enrol with.
    function addMember(
        address account,
        string calldata endpoint,
        bytes32 x25519PublicKey,
        bytes calldata tlsCertificate,
        uint256 datasetSize
    ) external onlyAdmin {
        bool founding = lastFinalizedRound == 0 && _rounds[currentRound].enrolled.length == 0;
        if (membershipRule == MembershipRule.Majority && !founding) {
            revert WrongMembershipRule(membershipRule);
        }
        _admit(account, endpoint, x25519PublicKey, tlsCertificate, datasetSize);
    }

    /// @notice Majority rule: an active member proposes `account`; its approval counts.
    /// @param account the candidate's Ethereum account.
    /// @param endpoint its gRPC endpoint, host:port.
    /// @param x25519PublicKey its X25519 public key.
    /// @param tlsCertificate the PEM of the self-signed certificate its node made.
    /// @param datasetSize the training samples it holds: what the approvers approve.
    function proposeMember(
        address account,
        string calldata endpoint,
        bytes32 x25519PublicKey,
        bytes calldata tlsCertificate,
        uint256 datasetSize
    ) external onlyActiveMember {
        if (membershipRule != MembershipRule.Majority) revert WrongMembershipRule(membershipRule);
        _checkCandidate(account, endpoint, x25519PublicKey, tlsCertificate, datasetSize);
        _proposalEpoch += 1;
        Proposal storage p = _proposals[account];
        p.endpoint = endpoint;
        p.x25519PublicKey = x25519PublicKey;
        p.tlsCertificate = tlsCertificate;
        p.datasetSize = datasetSize;
        p.approvals = 0;
        p.epoch = _proposalEpoch;
        emit MemberProposed(account, msg.sender);
        _approve(account, p);
    }

    /// @notice Majority rule: an active member approves a proposed `account`; more than half
    /// of the active members admit it.
    function approveMember(address account) external onlyActiveMember {
        if (membershipRule != MembershipRule.Majority) revert WrongMembershipRule(membershipRule);
        Proposal storage p = _proposals[account];
        if (p.epoch == 0 || _members[account].exists) revert NoProposal(account);
        _approve(account, p);
    }

    function _approve(address account, Proposal storage p) private {
        bytes32 key = keccak256(abi.encode(account, p.epoch, msg.sender));
        if (_approvedBy[key]) revert AlreadyApproved(account, msg.sender);
        _approvedBy[key] = true;
        p.approvals += 1;
        emit MemberApproved(account, msg.sender, p.approvals);
        if (p.approvals * 2 > activeMemberCount) {
            _admit(account, p.endpoint, p.x25519PublicKey, p.tlsCertificate, p.datasetSize);
        }
    }

    /// @dev Reverts unless `account` can be admitted with these: a non-zero account, an
    /// endpoint, a non-zero X25519 key, a certificate of 1..MAX_CERTIFICATE_BYTES bytes and a
    /// dataset size of 1..MAX_SAMPLE_COUNT.
    function _checkCandidate(
        address account,
        string memory endpoint,
        bytes32 x25519PublicKey,
        bytes memory tlsCertificate,
        uint256 datasetSize
    ) private view {
        if (account == address(0) || bytes(endpoint).length == 0 || x25519PublicKey == bytes32(0)) {
            revert InvalidMember(account);
        }
        if (tlsCertificate.length == 0 || tlsCertificate.length > MAX_CERTIFICATE_BYTES) {
            revert InvalidCertificate(account, tlsCertificate.length);
        }
        if (datasetSize == 0 || datasetSize > MAX_SAMPLE_COUNT) revert InvalidSampleCount(datasetSize);
        if (_members[account].exists) revert MemberExists(account);
    }

    /// @dev Records `account` as an active member (checked as `_checkCandidate` does).
    function _admit(
        address account,
        string memory endpoint,
        bytes32 x25519PublicKey,
        bytes memory tlsCertificate,
        uint256 datasetSize
    ) private {
        _checkCandidate(account, endpoint, x25519PublicKey, tlsCertificate, datasetSize);
        if (activeMemberCount >= MAX_MEMBERS) revert TooManyMembers(MAX_MEMBERS);
        _members[account] = Member(endpoint, x25519PublicKey, tlsCertificate, datasetSize, true, true);
        _memberList.push(account);
        activeMemberCount += 1;
        emit MemberAdded(account, endpoint, x25519PublicKey, datasetSize);
    }

    /// @notice Start a new HE key epoch now: from the first round nobody has encrypted yet
    /// (the current round while no member enrolled in it, else the next). `contextDigest` is
    /// keccak256 of the new public context, so a member can check the key it is handed.
    /// @dev Retryable: a rotation whose key never reached the members is superseded by
    /// calling again; the later epoch of the same first round wins.
    function rotateKey(bytes32 contextDigest) external onlyAdmin returns (uint256 epoch) {
        return _rotate(contextDigest);
    }

    function _rotate(bytes32 contextDigest) private returns (uint256 epoch) {
        if (contextDigest == bytes32(0)) revert InvalidKeyEpoch(0, 0);
        uint256 fromRound = _rounds[currentRound].keyEpochPlusOne == 0 ? currentRound : currentRound + 1;
        uint256 last = _keyEpochs[_keyEpochs.length - 1].fromRound;
        if (fromRound < last) fromRound = last;
        _keyEpochs.push(KeyEpoch(fromRound, contextDigest));
        epoch = _keyEpochs.length - 1;
        emit KeyRotated(epoch, fromRound, contextDigest);
    }

    /// @notice The key epoch that encrypts `round`, and its public context digest.
    function keyEpochFor(uint256 round)
        public
        view
        returns (uint256 epoch, bytes32 contextDigest)
    {
        for (uint256 i = _keyEpochs.length; i > 0; --i) {
            KeyEpoch storage k = _keyEpochs[i - 1];
            if (k.fromRound <= round) return (i - 1, k.contextDigest);
        }
        return (0, _keyEpochs[0].contextDigest);
    }

    /// @notice The first round and public context digest of key epoch `epoch`.
    function keyEpoch(uint256 epoch) external view returns (uint256 fromRound, bytes32 contextDigest) {
        if (epoch >= _keyEpochs.length) revert InvalidKeyEpoch(epoch, _keyEpochs.length);
        KeyEpoch storage k = _keyEpochs[epoch];
        return (k.fromRound, k.contextDigest);
    }

    /// @notice Number of key epochs so far (epoch 0 is the founding key).
    function keyEpochCount() external view returns (uint256) {
        return _keyEpochs.length;
    }

    /// @notice Approvals a proposed candidate has (0 when none).
    function proposalApprovals(address account) external view returns (uint256) {
        return _proposals[account].approvals;
    }

    /// @notice Deactivate `account` and start a new HE key epoch in the same call, so the
    /// removed member never holds the key of a round after its removal. An unsealed round
    /// that already fixed its key epoch is abandoned (every model unchanged) and the next
    /// round, under the new key, opens at once.
    function removeMember(address account, bytes32 contextDigest) external onlyAdmin {
        if (!_members[account].active) revert NotMember(account);
        if (contextDigest == bytes32(0)) revert InvalidKeyEpoch(0, 0);
        _members[account].active = false;
        activeMemberCount -= 1;
        uint256 round = currentRound;
        Round storage r = _rounds[round];
        if (!r.isSealed && r.keyEpochPlusOne != 0) {
            r.isSealed = true;
            emit RoundAbandoned(round, 0);
            _open(round + 1);
        }
        uint256 epoch = _rotate(contextDigest);
        emit MemberRemoved(account, epoch, _keyEpochs[epoch].fromRound);
    }

    /// @notice A member's record (inactive and unknown accounts return active = false).
    /// @return endpoint its gRPC endpoint.
    /// @return x25519PublicKey its X25519 public key.
    /// @return tlsCertificate the PEM of its TLS certificate.
    /// @return datasetSize the most samples it may enrol with.
    /// @return active whether it is a member now.
    function member(address account)
        external
        view
        returns (
            string memory endpoint,
            bytes32 x25519PublicKey,
            bytes memory tlsCertificate,
            uint256 datasetSize,
            bool active
        )
    {
        Member storage m = _members[account];
        return (m.endpoint, m.x25519PublicKey, m.tlsCertificate, m.datasetSize, m.active);
    }

    /// @notice Every account ever admitted, in admission order.
    function memberAddresses() external view returns (address[] memory) {
        return _memberList;
    }

    /// @notice The active members in admission order, rotated so the round's relay is first.
    /// @dev The relay is chosen from chain state only, so every node computes the same one;
    /// when it fails, the next in this list takes over.
    function relayOrder(uint256 round) public view returns (address[] memory order) {
        address[] memory active = new address[](activeMemberCount);
        uint256 k;
        for (uint256 i; i < _memberList.length; ++i) {
            if (_members[_memberList[i]].active) active[k++] = _memberList[i];
        }
        order = new address[](k);
        if (k == 0) return order;
        uint256 start = uint256(keccak256(abi.encode(address(this), round))) % k;
        for (uint256 i; i < k; ++i) {
            order[i] = active[(start + i) % k];
        }
    }

    // ------------------------------------------------------------------ rounds

    /// @notice Take part in `round` with `sampleCount` training samples, encrypting under
    /// key epoch `keyEpoch` (the one `keyEpochFor(round)` names; a rotation that lands first
    /// makes this revert with WrongKeyEpoch, never a silent mismatch). Fixes the participants
    /// as soon as every active member enrolled.
    function enrol(uint256 round, uint256 keyEpoch_, uint256 sampleCount)
        external
        onlyActiveMember
        onlyCurrentRound(round)
    {
        Round storage r = _rounds[round];
        if (r.attempt != 0) revert ParticipantsFixedAlready(round, r.attempt);
        if (r.sampleCounts[msg.sender] != 0) revert AlreadyEnrolled(round, msg.sender);
        if (sampleCount == 0) revert InvalidSampleCount(sampleCount);
        uint256 datasetSize = _members[msg.sender].datasetSize;
        if (sampleCount > datasetSize) revert SampleCountAboveDataset(sampleCount, datasetSize);
        (uint256 expected,) = keyEpochFor(round);
        if (keyEpoch_ != expected) revert WrongKeyEpoch(keyEpoch_, expected);
        r.keyEpochPlusOne = expected + 1;
        r.sampleCounts[msg.sender] = sampleCount;
        r.enrolled.push(msg.sender);
        r.totalSamples += sampleCount;
        emit Enrolled(round, msg.sender, sampleCount);
        if (r.enrolled.length == activeMemberCount && r.enrolled.length >= minPeers) {
            _fix(round, r);
        }
    }

    /// @notice Fix the participants of `round` with the members enrolled so far: allowed
    /// once every active member enrolled, or after the enrolment window with ≥ minPeers.
    function fixParticipants(uint256 round) external onlyActiveMember onlyCurrentRound(round) {
        Round storage r = _rounds[round];
        if (r.attempt != 0) revert ParticipantsFixedAlready(round, r.attempt);
        uint256 n = r.enrolled.length;
        if (n < minPeers) revert NotEnoughContributors(n, minPeers);
        uint256 closesAt = r.openedAt + enrolWindow;
        if (n < activeMemberCount && block.timestamp < closesAt) revert WindowOpen(round, closesAt);
        _fix(round, r);
    }

    function _fix(uint256 round, Round storage r) private {
        r.participants = r.enrolled;
        r.attempt = 1;
        r.attemptStartedAt = block.timestamp;
        emit ParticipantsFixed(round, 1, r.enrolled);
    }

    /// @notice Commit to this attempt's masked update: one keccak256 digest per block. A
    /// list of digests another participant committed in this round is refused, so nobody
    /// can pass off a captured update as its own.
    function commit(uint256 round, uint256 attempt, uint256 keyEpoch_, bytes32[] calldata blockDigests)
        external
        onlyActiveMember
        onlyCurrentRound(round)
    {
        Round storage r = _openAttempt(round);
        if (attempt != r.attempt) revert WrongAttempt(attempt, r.attempt);
        if (keyEpoch_ + 1 != r.keyEpochPlusOne) revert WrongKeyEpoch(keyEpoch_, r.keyEpochPlusOne - 1);
        if (!_isParticipant(r, msg.sender)) revert NotParticipant(round, msg.sender);
        if (r.committedAttempt[msg.sender] == attempt) revert AlreadyCommitted(round, msg.sender);
        if (blockDigests.length != blockCount) {
            revert WrongBlockCount(blockDigests.length, blockCount);
        }
        bytes32 fingerprint = keccak256(abi.encodePacked(blockDigests));
        address owner = r.committedBy[fingerprint];
        if (owner != address(0) && owner != msg.sender) revert DuplicateCommitment(round, owner);
        r.committedBy[fingerprint] = msg.sender;
        r.committedAttempt[msg.sender] = attempt;
        r.digests[msg.sender] = blockDigests;
        r.commitCount += 1;
        emit Committed(round, msg.sender, attempt);
    }

    /// @notice After the commit window, drop the participants that did not commit: the
    /// others start a new attempt (and re-mask); with fewer than minPeers left the round is
    /// abandoned and the next one opens, every model unchanged.
    function dropAbsent(uint256 round) external onlyActiveMember onlyCurrentRound(round) {
        Round storage r = _openAttempt(round);
        uint256 n = r.participants.length;
        if (r.commitCount == n) revert NobodyAbsent(round, r.attempt);
        uint256 closesAt = r.attemptStartedAt + commitWindow;
        if (block.timestamp < closesAt) revert WindowOpen(round, closesAt);
        address[] memory kept = new address[](r.commitCount);
        address[] memory dropped = new address[](n - r.commitCount);
        (uint256 k, uint256 d) = (0, 0);
        for (uint256 i; i < n; ++i) {
            address p = r.participants[i];
            if (r.committedAttempt[p] == r.attempt) kept[k++] = p;
            else dropped[d++] = p;
        }
        _newAttempt(round, r, kept, dropped);
    }

    /// @notice When every participant committed but the round is still unsealed twice the
    /// commit window after the attempt started, drop `withheld`: participants whose blocks
    /// no relay could get from them or from any member. The others re-mask and commit again.
    /// @dev Honest relays aggregate within seconds of the last commit, so only a stuck round
    /// reaches this; a node sends its blocks only after its own commit, so a member whose
    /// blocks nobody holds leaves no complete set of this attempt's ciphertexts behind.
    function dropWithheld(uint256 round, address[] calldata withheld)
        external
        onlyActiveMember
        onlyCurrentRound(round)
    {
        Round storage r = _openAttempt(round);
        uint256 n = r.participants.length;
        if (r.commitCount < n) revert NotEnoughContributors(r.commitCount, n);
        if (withheld.length == 0 || withheld.length > n) revert NobodyAbsent(round, r.attempt);
        uint256 closesAt = r.attemptStartedAt + 2 * commitWindow;
        if (block.timestamp < closesAt) revert WindowOpen(round, closesAt);
        for (uint256 i; i < withheld.length; ++i) {
            if (!_isParticipant(r, withheld[i])) revert NotParticipant(round, withheld[i]);
            for (uint256 j; j < i; ++j) {
                if (withheld[j] == withheld[i]) revert NotParticipant(round, withheld[i]);
            }
        }
        address[] memory kept = new address[](n - withheld.length);
        uint256 k;
        for (uint256 i; i < n; ++i) {
            address p = r.participants[i];
            bool drop;
            for (uint256 j; j < withheld.length; ++j) {
                if (withheld[j] == p) drop = true;
            }
            if (!drop) kept[k++] = p;
        }
        _newAttempt(round, r, kept, withheld);
    }

    /// @dev Next attempt with `kept` (or abandon the round when too few are left).
    function _newAttempt(uint256 round, Round storage r, address[] memory kept, address[] memory dropped)
        private
    {
        emit ParticipantsDropped(round, r.attempt, dropped);
        for (uint256 i; i < dropped.length; ++i) {
            r.totalSamples -= r.sampleCounts[dropped[i]];
        }
        if (kept.length < minPeers) {
            r.isSealed = true;
            emit RoundAbandoned(round, kept.length);
            _open(round + 1);
            return;
        }
        r.participants = kept;
        r.attempt += 1;
        r.attemptStartedAt = block.timestamp;
        r.commitCount = 0;
        emit ParticipantsFixed(round, r.attempt, kept);
    }

    function _open(uint256 round) private {
        currentRound = round;
        _rounds[round].openedAt = block.timestamp;
    }

    /// @dev The round's state while an attempt is open: participants fixed, not yet sealed.
    function _openAttempt(uint256 round) private view returns (Round storage r) {
        r = _rounds[round];
        if (r.attempt == 0) revert ParticipantsNotFixed(round);
        if (r.isSealed) revert RoundSealedAlready(round);
    }

    function _isParticipant(Round storage r, address account) private view returns (bool) {
        for (uint256 i; i < r.participants.length; ++i) {
            if (r.participants[i] == account) return true;
        }
        return false;
    }

    /// @notice Aggregate one block of this round: `ciphertexts[i]` belongs to the i-th
    /// participant. Needs every participant of the current attempt to have committed; the
    /// first aggregate seals the round.
    function aggregate(uint256 round, uint256 blockIndex, bytes[] calldata ciphertexts)
        external
        onlyActiveMember
        onlyCurrentRound(round)
    {
        Round storage r = _rounds[round];
        (uint256[] memory weights, uint256 weightSum) = _sealWeights(round, r);
        _aggregateBlock(round, r, blockIndex, ciphertexts, weights, weightSum, new bytes(blockBytes + 128));
    }

    /// @notice Aggregate several blocks of this round in one transaction, so a large model
    /// needs fewer transactions (each pays its base cost and signature once).
    /// `ciphertexts[k]` holds the n participants' ciphertexts of block `blockIndices[k]`, in
    /// participant order. All or nothing: one block already aggregated (another relay was
    /// quicker) reverts the whole call.
    function aggregateBlocks(uint256 round, uint256[] calldata blockIndices, bytes[][] calldata ciphertexts)
        external
        onlyActiveMember
        onlyCurrentRound(round)
    {
        if (blockIndices.length == 0 || ciphertexts.length != blockIndices.length) {
            revert WrongBlockCount(ciphertexts.length, blockIndices.length);
        }
        Round storage r = _rounds[round];
        (uint256[] memory weights, uint256 weightSum) = _sealWeights(round, r);
        // One result buffer for every block of the call: memory is never freed, and its cost
        // grows with the square of its size.
        bytes memory payload = new bytes(blockBytes + 128);
        for (uint256 k; k < blockIndices.length; ++k) {
            _aggregateBlock(round, r, blockIndices[k], ciphertexts[k], weights, weightSum, payload);
        }
    }

    /// @dev Checks that every participant of the attempt committed and returns their
    /// weights; the first aggregate of a round seals it.
    function _sealWeights(uint256 round, Round storage r)
        private
        returns (uint256[] memory weights, uint256 weightSum)
    {
        if (r.attempt == 0) revert ParticipantsNotFixed(round);
        uint256 n = r.participants.length;
        if (r.commitCount < n) revert NotEnoughContributors(r.commitCount, n);
        (weights, weightSum) = _weights(r);
        if (!r.isSealed) {
            r.isSealed = true;
            emit RoundSealed(round, n, weightSum);
        }
    }

    /// @dev Sums one block into `payload`, records and emits it; finalizes the round with
    /// its last block.
    function _aggregateBlock(
        uint256 round,
        Round storage r,
        uint256 blockIndex,
        bytes[] calldata ciphertexts,
        uint256[] memory weights,
        uint256 weightSum,
        bytes memory payload
    ) private {
        if (blockIndex >= blockCount) revert BlockOutOfRange(blockIndex, blockCount);
        if (r.aggregateDigests[blockIndex] != bytes32(0)) {
            revert BlockAlreadyAggregated(round, blockIndex);
        }
        if (ciphertexts.length != weights.length) {
            revert WrongContributionCount(ciphertexts.length, weights.length);
        }
        _sumBlock(r, blockIndex, ciphertexts, weights, payload);
        bytes32 resultDigest = _emitAggregate(round, blockIndex, weightSum, payload);
        r.aggregateDigests[blockIndex] = resultDigest;
        r.aggregatedBlocks += 1;
        if (r.aggregatedBlocks == blockCount) _finalize(round, r, weightSum);
    }

    /// @dev Verifies the block's ciphertexts and writes Σ wᵢ·ctᵢ mod q into `payload` (of
    /// blockBytes + 128 bytes) from offset 128; the first 128 bytes are left for the event's
    /// ABI head.
    function _sumBlock(
        Round storage r,
        uint256 blockIndex,
        bytes[] calldata ciphertexts,
        uint256[] memory weights,
        bytes memory payload
    ) private view {
        uint256 size = blockBytes;
        uint256 dataPtr;
        assembly ("memory-safe") {
            dataPtr := add(payload, 160)
        }
        uint256[] memory offsets = _verifiedOffsets(r, blockIndex, ciphertexts, dataPtr, size);
        _weightedSum(offsets, weights, dataPtr, size);
    }

    /// @dev Emits BlockAggregated straight from `payload` (no second copy of the block).
    function _emitAggregate(uint256 round, uint256 blockIndex, uint256 weightSum, bytes memory payload)
        private
        returns (bytes32 resultDigest)
    {
        uint256 size = payload.length - 128;
        bytes32 topic = BlockAggregated.selector;
        assembly ("memory-safe") {
            let head := add(payload, 32)
            resultDigest := keccak256(add(head, 128), size)
            mstore(head, weightSum)
            mstore(add(head, 32), resultDigest)
            mstore(add(head, 64), 96)
            mstore(add(head, 96), size)
            log3(head, add(size, 128), topic, round, blockIndex)
        }
    }

    /// @dev Checks every ciphertext's length and digest (hashing it in the `scratch` buffer)
    /// and returns their calldata offsets.
    function _verifiedOffsets(
        Round storage r,
        uint256 blockIndex,
        bytes[] calldata ciphertexts,
        uint256 scratch,
        uint256 size
    ) private view returns (uint256[] memory offsets) {
        uint256 n = ciphertexts.length;
        offsets = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            bytes calldata ct = ciphertexts[i];
            if (ct.length != size) revert WrongCiphertextLength(i, ct.length, size);
            bytes32 digest;
            uint256 offset;
            assembly ("memory-safe") {
                offset := ct.offset
                calldatacopy(scratch, offset, size)
                digest := keccak256(scratch, size)
            }
            address contributor = r.participants[i];
            if (digest != r.digests[contributor][blockIndex]) revert DigestMismatch(i, contributor);
            offsets[i] = offset;
        }
    }

    /// @dev Σ wᵢ·ctᵢ mod q into `out`. Each 32-byte word holds four coefficients; masking
    /// alternate 64-bit lanes puts two of them in 128-bit slots, so one `mul` scales two
    /// coefficients without carries (coefficient < 2^64, w ≤ 2^10, ≤ 64 terms < 2^80).
    function _weightedSum(uint256[] memory offsets, uint256[] memory weights, uint256 out, uint256 size)
        private
        view
    {
        uint256 q = modulus;
        uint256 n = offsets.length;
        assembly ("memory-safe") {
            let offsPtr := add(offsets, 32)
            let wPtr := add(weights, 32)
            let end := mul(n, 32)
            for { let j := 0 } lt(j, size) { j := add(j, 32) } {
                let oddLanes := 0
                let evenLanes := 0
                for { let i := 0 } lt(i, end) { i := add(i, 32) } {
                    let word := calldataload(add(mload(add(offsPtr, i)), j))
                    let w := mload(add(wPtr, i))
                    oddLanes := add(oddLanes, mul(and(word, _LANE_MASK), w))
                    evenLanes := add(evenLanes, mul(and(shr(64, word), _LANE_MASK), w))
                }
                let c0 := mod(shr(128, evenLanes), q)
                let c1 := mod(shr(128, oddLanes), q)
                let c2 := mod(and(evenLanes, _SLOT_MASK), q)
                let c3 := mod(and(oddLanes, _SLOT_MASK), q)
                mstore(add(out, j), or(or(shl(192, c0), shl(128, c1)), or(shl(64, c2), c3)))
            }
        }
    }

    function _finalize(uint256 round, Round storage r, uint256 weightSum) private {
        bytes32[] memory digests = new bytes32[](blockCount);
        for (uint256 b; b < blockCount; ++b) {
            digests[b] = r.aggregateDigests[b];
        }
        r.isFinalized = true;
        lastFinalizedRound = round;
        _open(round + 1);
        emit RoundFinalized(round, weightSum, keccak256(abi.encodePacked(digests)));
    }

    /// @dev Sample counts to integer weights: the counts themselves while their sum is at
    /// most MAX_WEIGHT_SUM, else floor(count·MAX/total) but at least 1.
    function _weights(Round storage r) private view returns (uint256[] memory w, uint256 sum) {
        uint256 n = r.participants.length;
        uint256 total = r.totalSamples;
        w = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 c = r.sampleCounts[r.participants[i]];
            uint256 wi = total <= MAX_WEIGHT_SUM ? c : (c * MAX_WEIGHT_SUM) / total;
            if (wi == 0) wi = 1;
            w[i] = wi;
            sum += wi;
        }
    }

    // ------------------------------------------------------------------ views

    /// @notice A round's state: `attempt` 0 while members enrol; `contributors` is the number
    /// of participants of the current attempt (enrolled members while attempt is 0),
    /// `committed` how many of them committed in it.
    function roundInfo(uint256 round)
        external
        view
        returns (
            uint256 attempt,
            uint256 contributors,
            uint256 committed,
            uint256 totalSamples,
            uint256 aggregatedBlocks,
            bool isSealed,
            bool isFinalized
        )
    {
        Round storage r = _rounds[round];
        uint256 n = r.attempt == 0 ? r.enrolled.length : r.participants.length;
        return (r.attempt, n, r.commitCount, r.totalSamples, r.aggregatedBlocks, r.isSealed,
                r.isFinalized);
    }

    /// @notice When `round` opened, when its current attempt started, and its key epoch
    /// (fixed by the first enrolment; before it, the epoch `keyEpochFor` names).
    function roundTiming(uint256 round)
        external
        view
        returns (uint256 openedAt, uint256 attemptStartedAt, uint256 keyEpoch_)
    {
        Round storage r = _rounds[round];
        (uint256 epoch,) = keyEpochFor(round);
        keyEpoch_ = r.keyEpochPlusOne == 0 ? epoch : r.keyEpochPlusOne - 1;
        return (r.openedAt, r.attemptStartedAt, keyEpoch_);
    }

    /// @notice Members enrolled in `round`, in enrolment order.
    function enrolled(uint256 round) external view returns (address[] memory) {
        return _rounds[round].enrolled;
    }

    /// @notice The participants of the round's current attempt (the mask set), in order.
    function participants(uint256 round) external view returns (address[] memory) {
        return _rounds[round].participants;
    }

    /// @notice What `account` committed in `round`: its sample count (0: not enrolled), the
    /// attempt of its last commit (0: none) and that commit's digests.
    function commitment(uint256 round, address account)
        external
        view
        returns (uint256 sampleCount, uint256 attempt, bytes32[] memory blockDigests)
    {
        Round storage r = _rounds[round];
        return (r.sampleCounts[account], r.committedAttempt[account], r.digests[account]);
    }

    /// @notice The weights the aggregate of `round` uses, in participant order, and their sum.
    function roundWeights(uint256 round)
        external
        view
        returns (address[] memory contributors, uint256[] memory weights, uint256 weightSum)
    {
        Round storage r = _rounds[round];
        (weights, weightSum) = _weights(r);
        return (r.participants, weights, weightSum);
    }

    /// @notice keccak256 of an aggregated block's coefficients (zero while not aggregated).
    function aggregateDigest(uint256 round, uint256 blockIndex) external view returns (bytes32) {
        return _rounds[round].aggregateDigests[blockIndex];
    }

    /// @notice Every block's aggregate digest of `round`, in block order (zero: not yet
    /// aggregated), so a relay learns what is left and a node checks its own sum in one call.
    function aggregateDigests(uint256 round) external view returns (bytes32[] memory digests) {
        Round storage r = _rounds[round];
        digests = new bytes32[](blockCount);
        for (uint256 b; b < blockCount; ++b) {
            digests[b] = r.aggregateDigests[b];
        }
    }
}
