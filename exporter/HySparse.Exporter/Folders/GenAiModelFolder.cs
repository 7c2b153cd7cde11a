using System.Text.Json;
using System.Text.Json.Nodes;

namespace HySparse.Exporter.Folders;

/// <summary>
/// An onnxruntime-genai model folder: a <c>genai_config.json</c> naming the decoder file, the decoder
/// (with its external data, if any), and whatever else genai or the app reads (tokenizer files, other
/// configs). The converter rewrites the decoder and the config's session options and copies the rest.
/// </summary>
public sealed class GenAiModelFolder
{
    /// <summary>The file that makes a folder an onnxruntime-genai model folder.</summary>
    public const string ConfigFileName = "genai_config.json";

    private GenAiModelFolder(string directory, JsonObject config, string decoderFile)
    {
        Directory = directory;
        Config = config;
        DecoderFile = decoderFile;
    }

    /// <summary>Full path of the folder.</summary>
    public string Directory { get; }

    /// <summary>The parsed <c>genai_config.json</c> (a private copy: editing it changes no file).</summary>
    public JsonObject Config { get; }

    /// <summary>The decoder's file name inside the folder (<c>model.decoder.filename</c>).</summary>
    public string DecoderFile { get; }

    /// <summary>Full path of the decoder model.</summary>
    public string DecoderPath => Path.Combine(Directory, DecoderFile);

    /// <summary>The <c>model.type</c> genai dispatches on (llama, qwen2, gpt2, …), or null when absent.</summary>
    public string? ModelType => (Config["model"] as JsonObject)?["type"]?.GetValue<string>();

    /// <summary>True when <paramref name="path"/> is a folder holding a <c>genai_config.json</c>.</summary>
    public static bool IsModelFolder(string path) =>
        System.IO.Directory.Exists(path) && File.Exists(Path.Combine(path, ConfigFileName));

    /// <summary>Reads the folder's config and checks that the decoder it names is there.</summary>
    /// <exception cref="ConversionException">The config is missing, unreadable, or names no usable decoder.</exception>
    public static GenAiModelFolder Open(string path)
    {
        var directory = Path.GetFullPath(path);
        var configPath = Path.Combine(directory, ConfigFileName);
        if (!File.Exists(configPath))
            throw new ConversionException(ConversionError.InvalidModel, $"'{path}' is not an onnxruntime-genai model folder: it has no {ConfigFileName}");
        JsonObject config;
        try
        {
            config = JsonNode.Parse(File.ReadAllText(configPath), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }) as JsonObject
                     ?? throw new ConversionException(ConversionError.InvalidModel, $"{configPath} does not hold a JSON object");
        }
        catch (JsonException e)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"{configPath} is not valid JSON: {e.Message}", inner: e);
        }
        catch (IOException e)
        {
            throw new ConversionException(ConversionError.InvalidModel, $"{configPath} cannot be read: {e.Message}", inner: e);
        }
        var decoder = (config["model"] as JsonObject)?["decoder"] as JsonObject
                      ?? throw new ConversionException(ConversionError.InvalidModel, $"{configPath} has no model.decoder section");
        string? file;
        try { file = decoder["filename"]?.GetValue<string>(); }
        catch (InvalidOperationException) { file = null; }
        if (string.IsNullOrEmpty(file))
            throw new ConversionException(ConversionError.InvalidModel, $"{configPath}: model.decoder.filename is missing or not a string");
        // genai resolves the file inside the folder; a name that leaves it is not a model of this folder.
        if (Path.IsPathRooted(file) || file.Split('/', '\\').Contains(".."))
            throw new ConversionException(ConversionError.InvalidModel, $"{configPath}: model.decoder.filename '{file}' must be a path inside the folder");
        var folder = new GenAiModelFolder(directory, config, file);
        if (!File.Exists(folder.DecoderPath))
            throw new ConversionException(ConversionError.InvalidModel, $"{configPath} names the decoder '{file}', which is not in {directory}");
        return folder;
    }

    /// <summary>
    /// The decoder's <c>session_options</c> object, created when absent: where genai reads
    /// <c>custom_ops_library</c> from.
    /// </summary>
    public JsonObject DecoderSessionOptions()
    {
        var decoder = (JsonObject)((JsonObject)Config["model"]!)["decoder"]!;
        if (decoder["session_options"] is JsonObject options) return options;
        options = new JsonObject();
        decoder["session_options"] = options;
        return options;
    }

    /// <summary>The <c>search</c> object, created when absent.</summary>
    public JsonObject Search()
    {
        if (Config["search"] is JsonObject search) return search;
        search = new JsonObject();
        Config["search"] = search;
        return search;
    }

    /// <summary>Writes the (edited) config into <paramref name="directory"/>, indented as genai's builder writes it.</summary>
    public void WriteConfig(string directory) =>
        File.WriteAllText(Path.Combine(directory, ConfigFileName), Config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
}
